// A restore refused before anything was written: `field` names the input at fault (as the node's
// settings, the message's payload or the command's options name it).
export class RestoreRefused extends Error {
  constructor(
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = 'RestoreRefused';
  }
}
