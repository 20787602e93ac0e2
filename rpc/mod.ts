/**
 * The wire protocol of termite: length-prefixed msgpack frames over TCP or
 * unix sockets, mutual HMAC-SHA256 authentication with a shared secret, and
 * calls in both directions with deadlines, cancellation and streamed chunks.
 *
 * On plain TCP (the default) the stream after the handshake is not
 * encrypted: run a farm on a network you trust, or give every member a
 * {@linkcode TlsConfig} (`tls.ts`) and listen with {@linkcode listenTls}: the
 * handshake then runs inside mutual TLS.
 *
 * @example
 * ```ts
 * const secret = await loadSecret("/etc/termite/secret");
 * await using server = listen({
 *   transport: "tcp", port: 0, secret, role: "coordinator",
 *   handlers: { add: ({ a, b }) => a + b },
 * });
 * await using peer = await connect({ transport: "tcp", port: server.port, secret, role: "worker" });
 * await peer.call("add", { a: 1, b: 2 }); // 3
 * ```
 *
 * @module
 */

export {
  AuthError,
  FrameError,
  isSecretMismatch,
  RpcError,
  SecretError,
  SecretMismatchError,
} from "./errors.ts";
export {
  allocBytesChunkFrame,
  BYTES_CHUNK_HEADER_BYTES,
  CHUNK_BYTES,
  closeQuietly,
  decodeBody,
  decodeMessage,
  encodeBytesChunkFrame,
  encodeFrame,
  finishBytesChunkFrame,
  FRAME_BYTES_MAX,
  FRAME_HEADER_BYTES,
  type FrameConn,
  FrameReader,
  type Message,
  MessageType,
  PROTOCOL_VERSION,
  writeAll,
} from "./frame.ts";
export {
  AUTH_TAG,
  CHALLENGE_BYTES,
  clientHandshake,
  computeProof,
  HANDSHAKE_FRAME_BYTES_MAX,
  HANDSHAKE_MAGIC,
  HANDSHAKE_TIMEOUT_MS,
  type HandshakeOptions,
  type HandshakeResult,
  newChallenge,
  type Role,
  ROLES,
  serverHandshake,
  type Side,
  timingSafeEqual,
} from "./handshake.ts";
export type { CallContext } from "./call_context.ts";
export {
  CALL_TIMEOUT_MS,
  type CallOptions,
  CALLS_PENDING_MAX,
  type Handler,
  type Handlers,
  HANDLERS_RUNNING_MAX,
  RpcPeer,
  type RpcPeerOptions,
} from "./peer.ts";
export { loadSecret, SECRET_BYTES_MAX, secretFromBytes } from "./secret.ts";
export {
  connect,
  CONNECT_TIMEOUT_MS,
  type ConnectOptions,
  formatAddr,
  listen,
  listenAny,
  type ListenOptions,
  listenTls,
  PEERS_MAX,
  type RpcServer,
} from "./transport.ts";
export {
  checkKeyPair,
  readPemFile,
  TLS_FILE_BYTES_MAX,
  type TlsConfig,
  TlsConfigError,
} from "./tls.ts";
export { WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES } from "./writer.ts";
