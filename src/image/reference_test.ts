import assert from "node:assert/strict";
import { familiarName, formatReference, parseReference } from "./reference.ts";

const DIGEST = `sha256:${"ab".repeat(32)}`;

Deno.test("parseReference() follows Docker's naming rules", () => {
  assert.deepEqual(parseReference("busybox"), {
    kind: "registry",
    registry: "docker.io",
    repository: "library/busybox",
    tag: "latest",
  });
  assert.deepEqual(parseReference("alpine:3.20"), {
    kind: "registry",
    registry: "docker.io",
    repository: "library/alpine",
    tag: "3.20",
  });
  assert.deepEqual(parseReference(`docker.io/library/alpine@${DIGEST}`), {
    kind: "registry",
    registry: "docker.io",
    repository: "library/alpine",
    digest: DIGEST,
  });
  assert.deepEqual(parseReference("localhost:5000/x:y"), {
    kind: "registry",
    registry: "localhost:5000",
    repository: "x",
    tag: "y",
  });
  assert.deepEqual(parseReference("user/app"), {
    kind: "registry",
    registry: "docker.io",
    repository: "user/app",
    tag: "latest",
  });
  assert.deepEqual(parseReference(`ghcr.io/o/r/app:1.0@${DIGEST}`), {
    kind: "registry",
    registry: "ghcr.io",
    repository: "o/r/app",
    tag: "1.0",
    digest: DIGEST,
  });
  assert.deepEqual(
    parseReference("docker://index.docker.io/library/debian:12"),
    {
      kind: "registry",
      registry: "docker.io",
      repository: "library/debian",
      tag: "12",
    },
  );
  assert.equal(parseReference("127.0.0.1:5000/a/b").kind, "registry");
  assert.equal(
    (parseReference("127.0.0.1:5000/a/b") as { registry: string }).registry,
    "127.0.0.1:5000",
  );
});

Deno.test("parseReference() reads local transports like skopeo", () => {
  assert.deepEqual(parseReference("oci:/images/box"), {
    kind: "oci",
    path: "/images/box",
  });
  assert.deepEqual(parseReference("oci:/images/box:v1"), {
    kind: "oci",
    path: "/images/box",
    tag: "v1",
  });
  assert.deepEqual(parseReference("oci-archive:/tmp/a.tar"), {
    kind: "oci-archive",
    path: "/tmp/a.tar",
  });
  assert.deepEqual(parseReference("docker-archive:/tmp/s.tar:busybox:1"), {
    kind: "docker-archive",
    path: "/tmp/s.tar",
    tag: "busybox:1",
  });
  assert.deepEqual(parseReference("docker-archive:/tmp/s.tar:@2"), {
    kind: "docker-archive",
    path: "/tmp/s.tar",
    index: 2,
  });
});

Deno.test("parseReference() refuses malformed references with the reason", () => {
  assert.throws(
    () => parseReference(""),
    /Cannot parse the image reference "": it is empty/,
  );
  assert.throws(() => parseReference("Ubuntu"), /lowercase/);
  assert.throws(() => parseReference("a b"), /spaces/);
  assert.throws(() => parseReference("alpine:-bad"), /bad tag "-bad"/);
  assert.throws(() => parseReference("alpine@sha256"), /bad digest/);
  assert.throws(() => parseReference("oci:"), /the path is empty/);
  assert.throws(() => parseReference("docker:alpine"), /docker:\/\/NAME/);
});

Deno.test("formatReference() and familiarName() give the long and short forms", () => {
  const cases: [string, string, string][] = [
    ["busybox", "docker.io/library/busybox:latest", "busybox"],
    ["alpine:3.20", "docker.io/library/alpine:3.20", "alpine:3.20"],
    ["localhost:5000/x:y", "localhost:5000/x:y", "localhost:5000/x:y"],
    [
      `alpine@${DIGEST}`,
      `docker.io/library/alpine@${DIGEST}`,
      `alpine@${DIGEST}`,
    ],
    ["oci:/p:t", "oci:/p:t", "oci:/p:t"],
  ];
  for (const [text, long, short] of cases) {
    const ref = parseReference(text);
    assert.equal(formatReference(ref), long);
    assert.equal(familiarName(ref), short);
    assert.deepEqual(parseReference(formatReference(ref)), ref);
  }
});
