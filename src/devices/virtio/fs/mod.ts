/**
 * virtio-fs: the device model ({@linkcode VirtioFs}), its FUSE server
 * ({@linkcode FuseServer}) and the FUSE protocol's numbers and layouts.
 *
 * @module
 */

export * from "./device.ts";
export * from "./server.ts";
export {
  FUSE_KERNEL_VERSION,
  FUSE_ROOT_ID,
  FUSE_SERVER_MINOR_VERSION,
  FuseOpcode,
  opcodeName,
} from "./fuse.ts";
