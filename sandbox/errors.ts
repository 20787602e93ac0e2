/**
 * An operating error of the sandbox: the launcher could not be built or could
 * not set up the job (mount, chroot, privileges), or the job's scratch space
 * could not be prepared or cleaned. A job that runs and fails is not an
 * error: its status is in the {@linkcode JobOutcome}.
 */
export class SandboxError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SandboxError";
  }
}
