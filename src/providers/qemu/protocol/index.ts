/**
 * QEMU protocol clients: QMP (monitor) and QGA (guest agent) over unix sockets.
 * Layers, modelled on QEMU's Python `qemu.qmp` package: message (framing),
 * protocol (socket + command queue), clients.
 */
export * from './errors';
export { DEFAULT_MAX_MESSAGE_BYTES, MessageDecoder, isEvent, isGreeting, isResponse, serializeCommand, toEvent } from './message';
export type { DecodedItem, QmpCommand, QmpEvent, QmpGreeting, QmpMessage, QmpTimestamp } from './message';
export { DEFAULT_CONNECT_TIMEOUT_MS, QmpConnection } from './protocol';
export type { ConnectionOptions, RequestOptions } from './protocol';
export { DEFAULT_QMP_TIMEOUT_MS, QmpClient } from './qmp-client';
export type { QmpConnectOptions, QmpExecuteOptions, WaitEventOptions } from './qmp-client';
export { DEFAULT_QGA_SYNC_TIMEOUT_MS, DEFAULT_QGA_TIMEOUT_MS, GuestAgentClient } from './guest-agent-client';
export type { GuestAgentConnectOptions, GuestAgentExecuteOptions } from './guest-agent-client';
export { connectWhenFree, exchange, exchangesOf } from './exchange';
export type { QmpExchange } from './exchange';
