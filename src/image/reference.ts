/**
 * Image references: where an image comes from. A registry reference
 * (`busybox`, `alpine:3.20`, `docker.io/library/alpine@sha256:...`,
 * `localhost:5000/x:y`, optionally `docker://...`) follows the Docker
 * conventions of the distribution project's reference grammar; a local
 * reference names a transport the way skopeo does (`oci:PATH[:TAG]`,
 * `oci-archive:PATH[:TAG]`, `docker-archive:PATH[:NAME[:TAG]|@INDEX]`).
 *
 * @module
 */

/** The registry of references that name none. */
export const DOCKER_HUB = "docker.io";
/** The host serving Docker Hub's registry API. */
export const DOCKER_HUB_API_HOST = "registry-1.docker.io";

/** An image in a registry. */
export interface RegistryReference {
  /** Where the image comes from. */
  kind: "registry";
  /** Registry host and optional port (`docker.io`, `localhost:5000`). */
  registry: string;
  /** Repository path (`library/alpine`). */
  repository: string;
  /** Tag; `latest` when neither tag nor digest is given. */
  tag?: string;
  /** Manifest digest; wins over the tag. */
  digest?: string;
}

/** An image in an OCI layout directory, an OCI archive or a `docker save` archive. */
export interface LocalReference {
  /** Where the image comes from. */
  kind: "oci" | "oci-archive" | "docker-archive";
  /** Path of the directory or archive. */
  path: string;
  /**
   * Which image: a tag (`ref.name`) for OCI, a `NAME:TAG` for a docker
   * archive; none means the only one.
   */
  tag?: string;
  /** For a docker archive: the image's index in `manifest.json`. */
  index?: number;
}

/** Any image reference. */
export type ImageReference = RegistryReference | LocalReference;

/** A path component of a repository (distribution reference grammar). */
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
/** A tag (distribution reference grammar). */
const TAG = /^[\w][\w.-]{0,127}$/;
/** A digest (algorithm:encoded, OCI descriptor.md). */
const DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
/** A registry host, `localhost`, IPv4, or `[IPv6]`, with an optional port. */
const HOST =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$/;

function fail(text: string, why: string): never {
  throw new Error(`Cannot parse the image reference "${text}": ${why}`);
}

function parseRegistryReference(text: string, original: string) {
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) fail(original, `bad digest "${digest}"`);
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) fail(original, `bad tag "${tag}"`);
  }
  let registry = DOCKER_HUB;
  const parts = rest.split("/");
  const first = parts[0]!;
  if (
    parts.length > 1 &&
    (first.includes(".") || first.includes(":") || first === "localhost" ||
      first.startsWith("["))
  ) {
    if (!HOST.test(first)) fail(original, `bad registry host "${first}"`);
    registry = first;
    parts.shift();
  }
  if (registry === "index.docker.io" || registry === DOCKER_HUB_API_HOST) {
    registry = DOCKER_HUB;
  }
  if (parts.length === 0 || parts.some((p) => !COMPONENT.test(p))) {
    fail(
      original,
      "a repository name is lowercase letters, digits and separators (. _ __ -) in /-separated parts",
    );
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift("library");
  const repository = parts.join("/");
  if (repository.length > 255) {
    fail(original, "the name is over 255 characters");
  }
  if (tag === undefined && digest === undefined) tag = "latest";
  const ref: RegistryReference = { kind: "registry", registry, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/**
 * Parses an image reference.
 *
 * @example
 * ```ts
 * import { parseReference } from "./reference.ts";
 * console.log(parseReference("alpine:3.20"));
 * // { kind: "registry", registry: "docker.io", repository: "library/alpine", tag: "3.20" }
 * console.log(parseReference("oci:/images/box:v1"));
 * // { kind: "oci", path: "/images/box", tag: "v1" }
 * ```
 */
export function parseReference(text: string): ImageReference {
  const transport = /^(oci|oci-archive|docker-archive|docker):(.*)$/s.exec(
    text,
  );
  if (transport) {
    const kind = transport[1]!;
    const rest = transport[2]!;
    if (kind === "docker") {
      if (!rest.startsWith("//")) fail(text, 'expected "docker://NAME"');
      return parseRegistryReference(rest.slice(2), text);
    }
    // As skopeo does: the path ends at the first colon.
    const colon = rest.indexOf(":");
    const path = colon >= 0 ? rest.slice(0, colon) : rest;
    const which = colon >= 0 ? rest.slice(colon + 1) : "";
    if (path === "") fail(text, "the path is empty");
    const ref: LocalReference = {
      kind: kind as LocalReference["kind"],
      path,
    };
    if (kind === "docker-archive" && which.startsWith("@")) {
      const index = Number(which.slice(1));
      if (!Number.isInteger(index) || index < 0) {
        fail(text, `bad image index "${which}"`);
      }
      ref.index = index;
    } else if (which !== "") {
      ref.tag = which;
    }
    return ref;
  }
  if (text === "" || /\s/.test(text)) fail(text, "it is empty or has spaces");
  return parseRegistryReference(text, text);
}

/**
 * The canonical text of a reference: `docker.io/library/alpine:3.20`,
 * `REGISTRY/REPO@DIGEST`, or the local form.
 *
 * @example
 * ```ts
 * import { formatReference, parseReference } from "./reference.ts";
 * console.log(formatReference(parseReference("busybox"))); // docker.io/library/busybox:latest
 * ```
 */
export function formatReference(ref: ImageReference): string {
  if (ref.kind === "registry") {
    const name = `${ref.registry}/${ref.repository}`;
    if (ref.digest) {
      return `${name}${ref.tag ? `:${ref.tag}` : ""}@${ref.digest}`;
    }
    return `${name}:${ref.tag ?? "latest"}`;
  }
  if (ref.index !== undefined) return `${ref.kind}:${ref.path}:@${ref.index}`;
  return `${ref.kind}:${ref.path}${ref.tag ? `:${ref.tag}` : ""}`;
}

/**
 * The short form people type: `busybox`, `alpine:3.20`, `user/app:1`,
 * `localhost:5000/x:y` (Docker Hub's `library/` and `:latest` dropped).
 *
 * @example
 * ```ts
 * import { familiarName, parseReference } from "./reference.ts";
 * console.log(familiarName(parseReference("docker.io/library/busybox:latest"))); // busybox
 * ```
 */
export function familiarName(ref: ImageReference): string {
  if (ref.kind !== "registry") return formatReference(ref);
  let name = ref.registry === DOCKER_HUB
    ? ref.repository.replace(/^library\//, "")
    : `${ref.registry}/${ref.repository}`;
  if (ref.tag && (ref.tag !== "latest" || ref.digest)) name += `:${ref.tag}`;
  if (ref.digest) name += `@${ref.digest}`;
  return name;
}
