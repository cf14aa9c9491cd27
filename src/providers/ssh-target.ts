// The one SSH options type: the host node builds it, providers that reach their hypervisor over
// SSH (Hyper-V today) take it as it is.
export interface SshTarget {
  host: string;
  port?: number;
  username: string;
  password?: string;
  /** the private key itself (PEM / OpenSSH format), not a path */
  privateKey?: string;
  passphrase?: string;
  /**
   * "SHA256:..." as `ssh-keygen -lf` prints it (the host node's "host key" field); when set, any
   * other host key is refused. Unset: any key is accepted and the one seen is logged.
   */
  hostFingerprint?: string;
}
