/**
 * The virtio-fs device model (virtio 1.2 §5.11, device ID 26): a FUSE
 * session over virtqueues. The config space names the filesystem (its tag,
 * what the guest passes to `mount -t virtiofs TAG DIR`) and the number of
 * request queues (one here). Queue 0 is the high-priority queue (FORGET,
 * BATCH_FORGET, INTERRUPT); queue 1 carries every other request. Each
 * chain is one request: its readable part a FUSE request, its writable part
 * the room for the reply; the {@linkcode FuseServer} answers it.
 *
 * The guest's chains are hostile input: a chain the queue cannot walk marks
 * the device broken (the transport's DEVICE_NEEDS_RESET); a request the
 * server cannot parse gets an error reply; neither throws into the host.
 *
 * @module
 */

import {
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_ID_FS,
  type VirtioContext,
  type VirtioDevice,
} from "../device.ts";
import type { Virtqueue } from "../queue.ts";
import type { Filesystem } from "../../../vfs/filesystem.ts";
import { FUSE_MAX_REQUEST_BYTES, FuseServer } from "./server.ts";

/** Index of the high-priority queue (FORGET, INTERRUPT). */
export const FS_HIPRIO_QUEUE = 0;
/** Index of the (only) request queue. */
export const FS_REQUEST_QUEUE = 1;
/**
 * Default queue size: a 1 MiB READ or WRITE takes 256 page buffers plus its
 * headers, so 1024 descriptors hold several even without indirect tables.
 */
export const FS_DEFAULT_QUEUE_SIZE = 1024;
/** Bytes of the tag field in the config space (virtio 1.2 §5.11.4). */
export const FS_TAG_BYTES = 36;

// struct virtio_fs_config (virtio 1.2 §5.11.4).
const CONFIG_TAG = 0;
const CONFIG_NUM_REQUEST_QUEUES = 36;
const CONFIG_SIZE = 40;

/** Options of {@linkcode VirtioFs}. */
export interface VirtioFsOptions {
  /** The tag the guest mounts by: 1 to 36 bytes of UTF-8, no NUL. */
  tag: string;
  /** What the device serves. */
  filesystem: Filesystem;
  /** Size of each queue (a power of two, at most 32768). Default 1024. */
  queueSize?: number;
  /** Told about filesystem bugs (the guest got EIO). Default: ignored. */
  onError?: (error: unknown, opcode: string) => void;
}

/**
 * A virtio-fs device serving one {@linkcode Filesystem} under one tag.
 *
 * @example
 * ```ts
 * import { VirtioFs } from "./device.ts";
 * import { LayerTree, OverlayFs } from "../../../vfs/mod.ts";
 * const device = new VirtioFs({
 *   tag: "rootfs",
 *   filesystem: new OverlayFs(new LayerTree()),
 * });
 * console.log(device.deviceId, device.tag); // 26 rootfs
 * ```
 */
export class VirtioFs implements VirtioDevice {
  /** Virtio device ID 26, file system. */
  readonly deviceId: number = VIRTIO_ID_FS;
  /** VIRTIO_F_INDIRECT_DESC (virtio-fs has no feature bits of its own). */
  readonly features: bigint = VIRTIO_F_INDIRECT_DESC;
  /** The high-priority queue and one request queue. */
  readonly queueMaxSizes: readonly number[];
  /** The tag the guest mounts by. */
  readonly tag: string;

  readonly #config = new Uint8Array(CONFIG_SIZE);
  readonly #server: FuseServer;
  #context: VirtioContext | undefined;

  /** Creates the device; throws a RangeError on a bad tag or queue size. */
  constructor(options: VirtioFsOptions) {
    const tag = new TextEncoder().encode(options.tag);
    if (tag.length === 0 || tag.length > FS_TAG_BYTES || tag.includes(0)) {
      throw new RangeError(
        `Cannot use virtio-fs tag ${
          JSON.stringify(options.tag)
        }: it must be 1 to ${FS_TAG_BYTES} bytes of UTF-8 without NUL`,
      );
    }
    const size = options.queueSize ?? FS_DEFAULT_QUEUE_SIZE;
    if (
      !Number.isInteger(size) || size < 2 || size > 32768 || (size & (size - 1))
    ) {
      throw new RangeError(
        `Cannot use virtio-fs queue size ${size}: it must be a power of two from 2 to 32768`,
      );
    }
    this.tag = options.tag;
    this.queueMaxSizes = [size, size];
    this.#config.set(tag, CONFIG_TAG);
    new DataView(this.#config.buffer).setUint32(
      CONFIG_NUM_REQUEST_QUEUES,
      1,
      true,
    );
    this.#server = new FuseServer(options.filesystem, {
      onError: options.onError,
    });
  }

  /** The FUSE server answering this device's requests. */
  get server(): FuseServer {
    return this.#server;
  }

  /** Reads the config space; bytes past it read as 0. */
  readConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset < 0 || offset >= CONFIG_SIZE) return;
    data.set(this.#config.subarray(offset, offset + data.length));
  }

  /** Ignores config writes: the config space is read-only (§5.11.4). */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  /** Starts serving: answers whatever the driver queued already. */
  activate(context: VirtioContext): void {
    this.#context = context;
    this.#serve(FS_HIPRIO_QUEUE);
    this.#serve(FS_REQUEST_QUEUE);
  }

  /** Handles a kick of either queue. */
  notify(index: number): void {
    if (index === FS_HIPRIO_QUEUE || index === FS_REQUEST_QUEUE) {
      this.#serve(index);
    }
  }

  /** Ends the FUSE session: the filesystem drops lookups and handles. */
  reset(): void {
    this.#context = undefined;
    this.#server.reset();
  }

  /** Answers the chains waiting on `index`, at most one ring's worth. */
  #serve(index: number): void {
    const context = this.#context;
    const queue = context?.queues[index];
    if (context === undefined || !queue?.ready) return;
    let used = false;
    try {
      for (let budget = queue.size; budget > 0; budget--) {
        const chain = queue.pop();
        if (chain === undefined) break;
        const request = queue.readAll(chain, FUSE_MAX_REQUEST_BYTES);
        const reply = this.#server.handle(request, chain.writableLength);
        // A reply with no room for its header is dropped (nothing written).
        const fits = reply !== undefined &&
          chain.writableLength >= reply[0]!.length;
        queue.pushUsed(chain.head, fits ? writePieces(queue, chain, reply) : 0);
        used = true;
      }
    } catch (e) {
      context.fail(e instanceof Error ? e.message : String(e));
      return;
    }
    if (used && this.#context === context) context.signalUsed(queue);
  }
}

function writePieces(
  queue: Virtqueue,
  chain: Parameters<Virtqueue["write"]>[0],
  pieces: Uint8Array[],
): number {
  let written = 0;
  for (const piece of pieces) {
    const n = queue.write(chain, piece, written);
    written += n;
    if (n < piece.length) break;
  }
  return written;
}
