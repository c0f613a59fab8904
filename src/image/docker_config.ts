/**
 * Registry credentials from the user's Docker client configuration
 * (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): the `auths`
 * map (base64 `user:password` in `auth`, or `username`/`password`, or an
 * `identitytoken`), and credential helpers (`credHelpers`, `credsStore`:
 * `docker-credential-NAME get`, the docker-credential-helpers protocol).
 *
 * @module
 */

import { join } from "node:path";
import { DOCKER_HUB } from "./reference.ts";

/** Credentials for one registry. */
export interface RegistryCredentials {
  /** User name (absent with an identity token alone). */
  username?: string;
  /** Password or access token. */
  password?: string;
  /** An OAuth2 refresh token (`identitytoken`), used at the token server. */
  identityToken?: string;
}

/** Options of {@linkcode findCredentials}. */
export interface FindCredentialsOptions {
  /** The config file; default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. */
  configPath?: string;
}

/** The keys Docker itself files Docker Hub's credentials under. */
const DOCKER_HUB_KEYS = [
  "https://index.docker.io/v1/",
  "https://index.docker.io/v1",
  "index.docker.io",
  "docker.io",
  "https://registry-1.docker.io",
  "registry-1.docker.io",
];

/** The user's Docker config file path. */
export function dockerConfigPath(): string {
  const dir = Deno.env.get("DOCKER_CONFIG") ??
    join(Deno.env.get("HOME") ?? ".", ".docker");
  return join(dir, "config.json");
}

/** `https://host:port/v1/` -> `host:port`. */
function hostOfKey(key: string): string {
  return key.replace(/^[a-z]+:\/\//, "").replace(/\/.*$/, "");
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

function fromEntry(entry: AuthEntry): RegistryCredentials | undefined {
  if (entry.identitytoken) return { identityToken: entry.identitytoken };
  if (entry.auth) {
    let text: string;
    try {
      text = atob(entry.auth);
    } catch {
      return undefined;
    }
    const colon = text.indexOf(":");
    if (colon < 0) return undefined;
    return { username: text.slice(0, colon), password: text.slice(colon + 1) };
  }
  if (entry.username !== undefined && entry.password !== undefined) {
    return { username: entry.username, password: entry.password };
  }
  return undefined;
}

async function fromHelper(
  helper: string,
  server: string,
): Promise<RegistryCredentials | undefined> {
  try {
    const child = new Deno.Command(`docker-credential-${helper}`, {
      args: ["get"],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(server));
    await writer.close();
    const out = await child.output();
    if (!out.success) return undefined;
    const doc = JSON.parse(new TextDecoder().decode(out.stdout));
    if (doc.Username === "<token>") return { identityToken: doc.Secret };
    return { username: doc.Username, password: doc.Secret };
  } catch {
    return undefined; // no such helper, or it said nothing useful
  }
}

/**
 * The credentials the user's Docker config holds for `registry` (a host
 * with an optional port, `docker.io` for Docker Hub), or undefined.
 *
 * @example
 * ```ts
 * import { findCredentials } from "./docker_config.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ auths: { "localhost:5000": { auth: btoa("me:secret") } } }));
 * console.log(await findCredentials("localhost:5000", { configPath: `${dir}/config.json` }));
 * // { username: "me", password: "secret" }
 * ```
 */
export async function findCredentials(
  registry: string,
  options: FindCredentialsOptions = {},
): Promise<RegistryCredentials | undefined> {
  const path = options.configPath ?? dockerConfigPath();
  let doc: {
    auths?: Record<string, AuthEntry>;
    credHelpers?: Record<string, string>;
    credsStore?: string;
  };
  try {
    doc = JSON.parse(await Deno.readTextFile(path));
  } catch {
    return undefined; // no config, or not JSON: no credentials
  }
  const hub = registry === DOCKER_HUB;
  const keys = hub ? DOCKER_HUB_KEYS : [
    registry,
    `https://${registry}`,
    `http://${registry}`,
  ];
  const server = hub ? DOCKER_HUB_KEYS[0]! : registry;
  const helper = keys.map((k) => doc.credHelpers?.[k]).find((h) => h);
  if (helper) return await fromHelper(helper, server);
  const auths = doc.auths ?? {};
  for (const key of keys) {
    const entry = auths[key];
    const creds = entry && fromEntry(entry);
    if (creds) return creds;
  }
  for (const [key, entry] of Object.entries(auths)) {
    if (keys.includes(hostOfKey(key)) || hostOfKey(key) === registry) {
      const creds = fromEntry(entry);
      if (creds) return creds;
    }
  }
  if (doc.credsStore) return await fromHelper(doc.credsStore, server);
  return undefined;
}
