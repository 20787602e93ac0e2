/**
 * The wrapper role: `client.ts` hands one command to the master over its
 * unix socket (or runs it here when no master can take it); `protocol.ts` is
 * the frames between them and the master's one check of a request. The
 * wrapper is started once per compile: `wrapper.ts` imports `client.ts`
 * directly, not this module. `native/termite_client.c` is an opt-in client in
 * C for the same fast path (built by `native/build.ts`), which execs
 * `bin/termite-wrap` for everything else.
 *
 * @module
 */
export {
  cleanPath,
  distrustSocket,
  findSocket,
  LOCAL_DEPTH_MAX,
  runShellBuiltin,
  runWrapper,
  SOCKET_NAME,
  type WrapperOptions,
} from "./client.ts";
export {
  checkWrapperRequest,
  decodeJson,
  encodeWrapperFrame,
  FrameType,
  WRAPPER_FRAME_BYTES_MAX,
  WRAPPER_PROTOCOL_VERSION,
  type WrapperExit,
  type WrapperFrame,
  WrapperFrameReader,
  WrapperProtocolError,
  type WrapperRequest,
  writeAll,
} from "./protocol.ts";
