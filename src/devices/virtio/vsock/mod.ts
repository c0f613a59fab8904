/**
 * The virtio-vsock device (virtio 1.2 §5.10): {@link VirtioVsock} and the
 * host-side connection API. `packet.ts` holds the wire format,
 * `connection.ts` one connection's state machine and flow control,
 * `device.ts` the device model.
 *
 * @example
 * ```ts
 * import { VirtioVsock } from "./mod.ts";
 * const vsock = new VirtioVsock({ guestCid: 3n });
 * const listener = vsock.listen(9998);
 * listener.close();
 * vsock.terminate("Cannot use vsock: the VM stopped");
 * ```
 *
 * @module
 */

export {
  EPHEMERAL_PORT_FIRST,
  LISTEN_BACKLOG,
  MAX_CONNECTIONS,
  MAX_PENDING_REPLIES,
  VirtioVsock,
  type VirtioVsockOptions,
  type VsockConnectOptions,
  type VsockListener,
  type VsockStats,
} from "./device.ts";
export {
  BUF_ALLOC_BYTES,
  CONNECT_TIMEOUT_MS,
  type ConnectionState,
  CREDIT_UPDATE_THRESHOLD_BYTES,
  SEND_QUEUE_BYTES,
  type VsockConnection,
} from "./connection.ts";
export {
  MAX_PACKET_PAYLOAD_BYTES,
  VSOCK_DEFAULT_GUEST_CID,
  VSOCK_HOST_CID,
} from "./packet.ts";
