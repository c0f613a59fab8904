/**
 * The OCI image format as data: media types, descriptors, manifests, image
 * indexes, image configs (OCI image spec v1.1: descriptor.md, manifest.md,
 * image-index.md, config.md, image-layout.md), the Docker equivalents the
 * registries still serve (Docker image manifest v2 schema 2), and platform
 * selection from an index.
 *
 * @module
 */

/** Media types of manifests and indexes (OCI media-types.md; Docker schema 2). */
export const MEDIA_TYPES = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerManifestList:
    "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar",
} as const;

/** The OCI layout annotation that names a manifest in `index.json` (annotations.md). */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";

/** A content descriptor (OCI descriptor.md). */
export interface Descriptor {
  /** Media type of the referenced content. */
  mediaType: string;
  /** `algorithm:hex` digest of the content. */
  digest: string;
  /** Size of the content in bytes. */
  size: number;
  /** Platform of a manifest listed in an index. */
  platform?: Platform;
  /** Annotations. */
  annotations?: Record<string, string>;
  /** Alternative download locations (ignored by initx). */
  urls?: string[];
}

/** An image manifest (OCI manifest.md; Docker schema 2 has the same shape). */
export interface ImageManifest {
  /** Always 2. */
  schemaVersion: number;
  /** The manifest's own media type. */
  mediaType?: string;
  /** The image config's descriptor. */
  config: Descriptor;
  /** Layers, base first. */
  layers: Descriptor[];
  /** Annotations. */
  annotations?: Record<string, string>;
}

/** An image index or manifest list (OCI image-index.md). */
export interface ImageIndex {
  /** Always 2. */
  schemaVersion: number;
  /** The index's own media type. */
  mediaType?: string;
  /** The manifests, each with its platform. */
  manifests: Descriptor[];
  /** Annotations. */
  annotations?: Record<string, string>;
}

/** A platform (OCI image-index.md "platform"). */
export interface Platform {
  /** Operating system, e.g. `linux`. */
  os: string;
  /** CPU architecture in Go's spelling, e.g. `amd64`, `arm64`. */
  architecture: string;
  /** CPU variant, e.g. `v8` for arm64 or `v7` for arm. */
  variant?: string;
  /** OS version (Windows images). */
  "os.version"?: string;
  /** Required OS features. */
  "os.features"?: string[];
}

/** The runtime part of an image config (OCI config.md "config"). */
export interface ContainerConfig {
  /** User or `user:group`, by name or number. */
  User?: string;
  /** Ports the image exposes (not used by initx). */
  ExposedPorts?: Record<string, unknown>;
  /** `NAME=value` strings. */
  Env?: string[];
  /** The command's leading arguments. */
  Entrypoint?: string[] | null;
  /** The default arguments (after the entrypoint). */
  Cmd?: string[] | null;
  /** Volume mount points (not used by initx). */
  Volumes?: Record<string, unknown>;
  /** Working directory. */
  WorkingDir?: string;
  /** Labels. */
  Labels?: Record<string, string>;
  /** The signal that stops the container. */
  StopSignal?: string;
}

/** An image config (OCI config.md). */
export interface ImageConfig {
  /** CPU architecture (Go's spelling). */
  architecture: string;
  /** Operating system. */
  os: string;
  /** CPU variant. */
  variant?: string;
  /** Creation time, RFC 3339. */
  created?: string;
  /** Who made it. */
  author?: string;
  /** Runtime defaults. */
  config?: ContainerConfig;
  /** The layers' uncompressed digests. */
  rootfs: { type: string; diff_ids: string[] };
  /** How each layer came about. */
  history?: {
    created?: string;
    created_by?: string;
    comment?: string;
    empty_layer?: boolean;
  }[];
}

/** Web Crypto names of the digest algorithms initx computes. */
const DIGEST_ALGORITHMS: Readonly<Record<string, string>> = {
  sha256: "SHA-256",
  sha512: "SHA-512",
};

/**
 * The `ALGORITHM:HEX` digest of `bytes` (sha256 or sha512), through Web
 * Crypto: `node:crypto` would cost every start-up its loading time.
 *
 * @example
 * ```ts
 * import { digestOf } from "./oci.ts";
 * console.log(await digestOf(new Uint8Array(), "sha512")); // sha512:cf83e135...
 * ```
 */
export async function digestOf(
  bytes: Uint8Array,
  algorithm: string,
): Promise<string> {
  const name = DIGEST_ALGORITHMS[algorithm];
  if (name === undefined) {
    throw new Error(
      `Cannot compute a ${algorithm} digest: initx verifies sha256 and sha512 only`,
    );
  }
  const hash = new Uint8Array(
    await crypto.subtle.digest(name, bytes as Uint8Array<ArrayBuffer>),
  );
  let hex = "";
  for (const b of hash) hex += b.toString(16).padStart(2, "0");
  return `${algorithm}:${hex}`;
}

/**
 * The `sha256:` digest of `bytes`.
 *
 * @example
 * ```ts
 * import { sha256Digest } from "./oci.ts";
 * console.log(await sha256Digest(new Uint8Array())); // sha256:e3b0c442...
 * ```
 */
export function sha256Digest(bytes: Uint8Array): Promise<string> {
  return digestOf(bytes, "sha256");
}

/** A digest's form (OCI descriptor.md "Digests"); initx verifies sha256 and sha512. */
const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

/**
 * Checks that `digest` is a sha256 or sha512 digest, the algorithms initx
 * can verify; returns it.
 *
 * @example
 * ```ts
 * import { checkDigest } from "./oci.ts";
 * checkDigest("sha256:" + "0".repeat(64));
 * ```
 */
export function checkDigest(digest: string): string {
  if (!DIGEST.test(digest)) {
    throw new Error(
      `Cannot use the digest "${digest}": expected sha256:<64 hex> or sha512:<128 hex>`,
    );
  }
  return digest;
}

/** Go's architecture names for Deno's. */
const GO_ARCH: Record<string, string> = { x86_64: "amd64", aarch64: "arm64" };

/**
 * The platform initx runs images for on this host: Linux (the guest's OS,
 * whatever the host's) on the host's CPU.
 *
 * @example
 * ```ts
 * import { hostPlatform } from "./oci.ts";
 * console.log(hostPlatform()); // { os: "linux", architecture: "amd64" }
 * ```
 */
export function hostPlatform(): Platform {
  const architecture = GO_ARCH[Deno.build.arch] ?? Deno.build.arch;
  return { os: "linux", architecture };
}

/**
 * Parses `os/arch[/variant]` (e.g. `linux/arm64`, `linux/arm/v7`).
 *
 * @example
 * ```ts
 * import { parsePlatform } from "./oci.ts";
 * console.log(parsePlatform("linux/arm/v7").variant); // "v7"
 * ```
 */
export function parsePlatform(text: string): Platform {
  const [os, architecture, variant, ...rest] = text.split("/");
  if (!os || !architecture || rest.length > 0 || variant === "") {
    throw new Error(
      `Cannot parse the platform "${text}": expected OS/ARCH[/VARIANT], e.g. linux/arm64`,
    );
  }
  const arch = GO_ARCH[architecture] ?? architecture;
  return variant
    ? { os, architecture: arch, variant }
    : { os, architecture: arch };
}

/**
 * `os/arch[/variant]` of a platform.
 *
 * @example
 * ```ts
 * import { formatPlatform } from "./oci.ts";
 * console.log(formatPlatform({ os: "linux", architecture: "arm64", variant: "v8" })); // linux/arm64/v8
 * ```
 */
export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter((x) => x).join("/");
}

/** Variants assumed when a platform names none (containerd's defaults). */
const DEFAULT_VARIANT: Record<string, string> = { arm64: "v8", arm: "v7" };

/**
 * Whether an index entry's platform serves `want`: same OS and
 * architecture, and the same variant when `want` names one (arm64's `v8`
 * and arm's `v7` are what a missing variant means).
 *
 * @example
 * ```ts
 * import { platformMatches } from "./oci.ts";
 * console.log(platformMatches({ os: "linux", architecture: "arm64" }, { os: "linux", architecture: "arm64", variant: "v8" })); // true
 * ```
 */
export function platformMatches(have: Platform, want: Platform): boolean {
  if (have.os !== want.os || have.architecture !== want.architecture) {
    return false;
  }
  if (!want.variant) return true;
  const variant = have.variant ?? DEFAULT_VARIANT[have.architecture];
  return variant === want.variant;
}

/**
 * Picks the manifest for `want` from an index: the first matching entry
 * (registries list the preferred variant first). Attestation manifests
 * (`unknown/unknown`) never match.
 *
 * @example
 * ```ts
 * import { selectPlatform } from "./oci.ts";
 * const d = selectPlatform({ schemaVersion: 2, manifests: [
 *   { mediaType: "application/vnd.oci.image.manifest.v1+json", digest: "sha256:" + "a".repeat(64), size: 1, platform: { os: "linux", architecture: "arm64" } },
 * ] }, { os: "linux", architecture: "arm64" });
 * console.log(d.digest.slice(0, 8)); // sha256:a
 * ```
 */
export function selectPlatform(index: ImageIndex, want: Platform): Descriptor {
  const found = (index.manifests ?? []).find((m) =>
    m.platform !== undefined && platformMatches(m.platform, want)
  );
  if (found) return found;
  const offered = (index.manifests ?? []).map((m) =>
    m.platform ? formatPlatform(m.platform) : "?"
  ).filter((p) => p !== "unknown/unknown");
  throw new Error(
    `Cannot find a manifest for ${formatPlatform(want)}: the image offers ${
      offered.length > 0 ? offered.join(", ") : "none"
    } (choose one with the platform option)`,
  );
}

/** Whether a media type is an index or manifest list. */
export function isIndexMediaType(mediaType: string | undefined): boolean {
  return mediaType === MEDIA_TYPES.ociIndex ||
    mediaType === MEDIA_TYPES.dockerManifestList;
}

/** Whether a media type is an image manifest. */
export function isManifestMediaType(mediaType: string | undefined): boolean {
  return mediaType === MEDIA_TYPES.ociManifest ||
    mediaType === MEDIA_TYPES.dockerManifest;
}

/**
 * Parses manifest or index JSON and tells which it is, by its `mediaType`
 * (or, for OCI documents that omit it, by whether it has `manifests`).
 *
 * @example
 * ```ts
 * import { parseManifestOrIndex } from "./oci.ts";
 * const r = parseManifestOrIndex(new TextEncoder().encode('{"schemaVersion":2,"manifests":[]}'));
 * console.log(r.kind); // "index"
 * ```
 */
export function parseManifestOrIndex(
  bytes: Uint8Array,
  mediaType?: string,
):
  | { kind: "index"; index: ImageIndex }
  | { kind: "manifest"; manifest: ImageManifest } {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`Cannot parse the manifest: ${(e as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null) {
    throw new Error("Cannot parse the manifest: not a JSON object");
  }
  const type = (doc.mediaType as string | undefined) ?? mediaType;
  if (doc.schemaVersion === 1) {
    throw new Error(
      "Cannot use the manifest: Docker schema 1 manifests are not supported (push the image again with a current tool)",
    );
  }
  if (isIndexMediaType(type) || (!type && Array.isArray(doc.manifests))) {
    if (!Array.isArray(doc.manifests)) {
      throw new Error("Cannot parse the index: it has no manifests list");
    }
    return { kind: "index", index: doc as unknown as ImageIndex };
  }
  if (
    isManifestMediaType(type) ||
    (!type && typeof doc.config === "object" && Array.isArray(doc.layers))
  ) {
    if (typeof doc.config !== "object" || !Array.isArray(doc.layers)) {
      throw new Error("Cannot parse the manifest: it has no config or layers");
    }
    return { kind: "manifest", manifest: doc as unknown as ImageManifest };
  }
  throw new Error(
    `Cannot use the manifest: unsupported media type "${type ?? "(none)"}"`,
  );
}
