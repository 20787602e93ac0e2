/**
 * Content-addressed store: blobs named by their SHA-256, shared by master and worker.
 *
 * @module
 */
export { CasError, type CasErrorCode } from "./errors.ts";
export {
  HASH_CHUNK_BYTES,
  hashBuffer,
  hashBytes,
  hashFile,
  hashReader,
  hashReaderSync,
  isHash,
} from "./hash.ts";
export {
  type BlobSink,
  type EnsureOptions,
  type Fetcher,
  Store,
  type StoreOptions,
  type StoreSink,
} from "./store.ts";
