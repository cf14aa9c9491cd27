// A restore refused before anything was written: `field` names the input at fault (as the node's
// settings, the message's payload or the command's options name it). Its name stays "Error", so
// that Node-RED's Catch nodes get the message as it is: "<field>: <why>".
export class RestoreRefused extends Error {
  constructor(
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
  }
}
