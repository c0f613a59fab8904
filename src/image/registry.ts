/**
 * A client of the OCI distribution API (distribution-spec v1.1, "Pull"):
 * `GET /v2/NAME/manifests/REF` and `GET /v2/NAME/blobs/DIGEST`, with the
 * authentication registries use: anonymous, bearer tokens from the token
 * server named by a `401` response's `WWW-Authenticate: Bearer realm=...`
 * challenge (the Docker registry token authentication specification), and
 * HTTP basic auth, both with credentials from the user's Docker config.
 *
 * @module
 */

import { findCredentials, type RegistryCredentials } from "./docker_config.ts";
import { digestOf, MEDIA_TYPES } from "./oci.ts";
import { DOCKER_HUB, DOCKER_HUB_API_HOST } from "./reference.ts";

/** Options of {@linkcode RegistryClient}. */
export interface RegistryClientOptions {
  /**
   * Use plain HTTP. Default: only for loopback hosts (`localhost`,
   * `127.x.x.x`, `[::1]`) and hosts listed in `INITX_INSECURE_REGISTRIES`
   * (comma-separated).
   */
  insecure?: boolean;
  /** Credentials to use instead of the Docker config's. */
  credentials?: RegistryCredentials;
  /** The Docker config file to read credentials from. */
  dockerConfigPath?: string;
  /** Sent as `User-Agent`. */
  userAgent?: string;
}

/** A manifest or index as the registry served it, digest verified. */
export interface FetchedManifest {
  /** The raw bytes (the digest is over these). */
  bytes: Uint8Array;
  /** `Content-Type` without parameters. */
  mediaType: string;
  /** The manifest's digest. */
  digest: string;
}

/** A parsed `WWW-Authenticate` challenge (RFC 7235 section 4.1). */
export interface AuthChallenge {
  /** `bearer` or `basic`, lower case. */
  scheme: string;
  /** Parameters (`realm`, `service`, `scope`, ...). */
  params: Record<string, string>;
}

/** Manifests registries may serve, best first (sent as `Accept`). */
const MANIFEST_ACCEPT = [
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerManifestList,
  MEDIA_TYPES.dockerManifest,
].join(", ");

/** Manifests larger than this are refused (distribution-spec suggests 4 MiB). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Redirects followed for one blob. */
const MAX_REDIRECTS = 5;
/** How long the reachability probe waits for a registry. */
export const REACHABILITY_TIMEOUT_MS = 3000;

/**
 * Parses a `WWW-Authenticate` header value.
 *
 * @example
 * ```ts
 * import { parseChallenge } from "./registry.ts";
 * const c = parseChallenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"');
 * console.log(c?.scheme, c?.params.scope); // bearer repository:a/b:pull
 * ```
 */
export function parseChallenge(
  header: string | null,
): AuthChallenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
  for (const p of m[2]!.matchAll(re)) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined
      ? p[2].replace(/\\(.)/g, "$1")
      : p[3]!;
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

/** Whether a registry host is on this machine. */
export function isLoopbackHost(registry: string): boolean {
  const host = registry.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  return host === "localhost" || /^127\.\d+\.\d+\.\d+$/.test(host) ||
    host === "::1";
}

/** The host:port that serves a registry's API (Docker Hub's differs from its name). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry;
}

function useHttp(registry: string, insecure: boolean | undefined): boolean {
  if (insecure !== undefined) return insecure;
  if (isLoopbackHost(registry)) return true;
  const list = (Deno.env.get("INITX_INSECURE_REGISTRIES") ?? "").split(",")
    .map((s) => s.trim()).filter((s) => s);
  return list.includes(registry);
}

/**
 * Whether the registry answers at all within `timeoutMs` (any HTTP answer
 * counts, `401` included). Fails at once when the name does not resolve or
 * the connection is refused.
 *
 * @example
 * ```ts ignore
 * import { registryReachable } from "./registry.ts";
 * console.log(await registryReachable("docker.io"));
 * ```
 */
export async function registryReachable(
  registry: string,
  options: { timeoutMs?: number; insecure?: boolean } = {},
): Promise<boolean> {
  const scheme = useHttp(registry, options.insecure) ? "http" : "https";
  try {
    const res = await fetch(`${scheme}://${registryApiHost(registry)}/v2/`, {
      signal: AbortSignal.timeout(options.timeoutMs ?? REACHABILITY_TIMEOUT_MS),
    });
    await res.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

async function errorDetail(res: Response): Promise<string> {
  const text = await res.text().catch(() => "");
  try {
    const doc = JSON.parse(text);
    const errors = doc.errors as { code?: string; message?: string }[];
    if (Array.isArray(errors) && errors.length > 0) {
      return errors.map((e) => [e.code, e.message].filter((x) => x).join(": "))
        .join("; ");
    }
  } catch {
    // not the registry's JSON error body
  }
  return text.trim().slice(0, 200);
}

async function readLimited(res: Response, limit: number): Promise<Uint8Array> {
  const declared = Number(res.headers.get("content-length") ?? "0");
  if (declared > limit) {
    await res.body?.cancel();
    throw new Error(`${declared} bytes is over the limit of ${limit}`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of res.body ?? new ReadableStream()) {
    total += chunk.length;
    if (total > limit) throw new Error(`over the limit of ${limit} bytes`);
    chunks.push(chunk);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * A client of one registry. Tokens are kept per repository scope for the
 * client's life.
 *
 * @example
 * ```ts ignore
 * import { RegistryClient } from "./registry.ts";
 * const client = new RegistryClient("docker.io");
 * const m = await client.getManifest("library/busybox", "latest");
 * console.log(m.mediaType, m.digest);
 * ```
 */
export class RegistryClient {
  #registry: string;
  #base: string;
  #options: RegistryClientOptions;
  #credentials: Promise<RegistryCredentials | undefined> | undefined;
  #auth = new Map<string, string>();

  /** A client of `registry` (host and optional port; `docker.io` for Docker Hub). */
  constructor(registry: string, options: RegistryClientOptions = {}) {
    this.#registry = registry;
    this.#options = options;
    const scheme = useHttp(registry, options.insecure) ? "http" : "https";
    this.#base = `${scheme}://${registryApiHost(registry)}`;
  }

  /** The registry's API base URL. */
  get baseUrl(): string {
    return this.#base;
  }

  #creds(): Promise<RegistryCredentials | undefined> {
    this.#credentials ??= this.#options.credentials
      ? Promise.resolve(this.#options.credentials)
      : findCredentials(this.#registry, {
        configPath: this.#options.dockerConfigPath,
      });
    return this.#credentials;
  }

  #headers(scope: string, extra: Record<string, string> = {}): Headers {
    const h = new Headers(extra);
    h.set("user-agent", this.#options.userAgent ?? "initx");
    const auth = this.#auth.get(scope);
    if (auth) h.set("authorization", auth);
    return h;
  }

  async #token(challenge: AuthChallenge, scope: string): Promise<string> {
    const realm = challenge.params.realm;
    if (!realm) {
      throw new Error(
        `Cannot authenticate to ${this.#registry}: its bearer challenge names no token server (realm)`,
      );
    }
    const creds = await this.#creds();
    const url = new URL(realm);
    const service = challenge.params.service;
    const wantScope = challenge.params.scope ?? scope;
    let res: Response;
    try {
      if (creds?.identityToken) {
        // OAuth2 refresh-token grant (the token spec's "OAuth2 Token").
        const form = new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: creds.identityToken,
          client_id: "initx",
          scope: wantScope,
        });
        if (service) form.set("service", service);
        res = await fetch(url, { method: "POST", body: form });
      } else {
        if (service) url.searchParams.set("service", service);
        url.searchParams.set("scope", wantScope);
        const headers = new Headers({
          "user-agent": this.#options.userAgent ?? "initx",
        });
        if (creds?.username !== undefined) {
          headers.set(
            "authorization",
            `Basic ${btoa(`${creds.username}:${creds.password ?? ""}`)}`,
          );
        }
        res = await fetch(url, { headers });
      }
    } catch (e) {
      throw new Error(
        `Cannot reach the token server ${url.origin} of ${this.#registry}: ${
          (e as Error).message
        }`,
      );
    }
    if (!res.ok) {
      const detail = await errorDetail(res);
      throw new Error(
        `Cannot get a token from ${url.origin} for ${this.#registry} (${wantScope}): HTTP ${res.status}${
          detail ? `: ${detail}` : ""
        }${creds ? " (check the credentials in the Docker config)" : ""}`,
      );
    }
    const doc = await res.json().catch(() => ({}));
    const token = doc.token ?? doc.access_token;
    if (typeof token !== "string" || token === "") {
      throw new Error(
        `Cannot get a token from ${url.origin} for ${this.#registry}: the answer has no token`,
      );
    }
    return `Bearer ${token}`;
  }

  /**
   * A request, authenticating once when the registry answers `401`.
   * Redirects are followed by hand so that credentials never go to another
   * host (blob storage often redirects to one).
   */
  async #get(
    path: string,
    scope: string,
    extra: Record<string, string> = {},
  ): Promise<Response> {
    const url = `${this.#base}${path}`;
    let res = await this.#fetchFollowing(url, scope, extra);
    if (res.status === 401) {
      const challenge = parseChallenge(res.headers.get("www-authenticate"));
      await res.body?.cancel();
      if (challenge?.scheme === "bearer") {
        this.#auth.set(scope, await this.#token(challenge, scope));
      } else if (challenge?.scheme === "basic") {
        const creds = await this.#creds();
        if (creds?.username === undefined) {
          throw new Error(
            `Cannot pull from ${this.#registry}: it wants a user name and password and the Docker config has none for it (run "docker login ${this.#registry}")`,
          );
        }
        this.#auth.set(
          scope,
          `Basic ${btoa(`${creds.username}:${creds.password ?? ""}`)}`,
        );
      } else {
        throw new Error(
          `Cannot pull from ${this.#registry}: it answered 401 with an authentication scheme initx does not speak (${
            res.headers.get("www-authenticate") ?? "none"
          })`,
        );
      }
      res = await this.#fetchFollowing(url, scope, extra);
      if (res.status === 401) {
        await res.body?.cancel();
        throw new Error(
          `Cannot pull from ${this.#registry}: access denied for ${scope} (check the name, and the credentials in the Docker config)`,
        );
      }
    }
    return res;
  }

  async #fetchFollowing(
    url: string,
    scope: string,
    extra: Record<string, string>,
  ): Promise<Response> {
    let current = new URL(url);
    const origin = current.origin;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const headers = this.#headers(scope, extra);
      if (current.origin !== origin) headers.delete("authorization");
      let res: Response;
      try {
        res = await fetch(current, { headers, redirect: "manual" });
      } catch (e) {
        throw new Error(
          `Cannot reach the registry ${this.#registry} (${current.origin}): ${
            (e as Error).message
          }`,
        );
      }
      const location = res.headers.get("location");
      if (res.status >= 300 && res.status < 400 && location) {
        await res.body?.cancel();
        current = new URL(location, current);
        continue;
      }
      return res;
    }
    throw new Error(
      `Cannot pull from ${this.#registry}: more than ${MAX_REDIRECTS} redirects for ${url}`,
    );
  }

  /**
   * Fetches a manifest or index by tag or digest and verifies its digest:
   * against the digest asked for, else against `Docker-Content-Digest`.
   */
  async getManifest(
    repository: string,
    reference: string,
  ): Promise<FetchedManifest> {
    const scope = `repository:${repository}:pull`;
    const res = await this.#get(
      `/v2/${repository}/manifests/${reference}`,
      scope,
      { accept: MANIFEST_ACCEPT },
    );
    const what = `${this.#registry}/${repository}${
      reference.includes(":") ? "@" : ":"
    }${reference}`;
    if (res.status === 404) {
      const detail = await errorDetail(res);
      throw new Error(
        `Cannot find the image ${what}: the registry has no such manifest${
          detail ? ` (${detail})` : ""
        }; check the name and tag`,
      );
    }
    if (!res.ok) {
      const detail = await errorDetail(res);
      throw new Error(
        `Cannot get the manifest of ${what}: HTTP ${res.status}${
          detail ? `: ${detail}` : ""
        }`,
      );
    }
    let bytes: Uint8Array;
    try {
      bytes = await readLimited(res, MAX_MANIFEST_BYTES);
    } catch (e) {
      throw new Error(
        `Cannot get the manifest of ${what}: ${(e as Error).message}`,
      );
    }
    const mediaType = (res.headers.get("content-type") ?? "").split(";")[0]!
      .trim();
    const expected = reference.includes(":")
      ? reference
      : res.headers.get("docker-content-digest") ?? undefined;
    const algorithm = expected?.split(":")[0] ?? "sha256";
    const digest = await digestOf(bytes, algorithm);
    if (expected !== undefined && digest !== expected) {
      throw new Error(
        `Cannot use the manifest of ${what}: its content has the digest ${digest}, not ${expected}`,
      );
    }
    return { bytes, mediaType, digest };
  }

  /**
   * Starts a blob download. The caller verifies the bytes (the blob store
   * does, as it stores them) and must consume or cancel the body.
   */
  async getBlob(repository: string, digest: string): Promise<Response> {
    const scope = `repository:${repository}:pull`;
    const res = await this.#get(`/v2/${repository}/blobs/${digest}`, scope);
    if (!res.ok) {
      const detail = await errorDetail(res);
      throw new Error(
        `Cannot download the blob ${digest} of ${this.#registry}/${repository}: HTTP ${res.status}${
          detail ? `: ${detail}` : ""
        }`,
      );
    }
    return res;
  }
}
