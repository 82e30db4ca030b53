/**
 * The NBD wire protocol: every message layout and constant this server uses, declared once.
 * Source of truth: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md (section names are
 * quoted next to each declaration). All integers on the wire are big-endian.
 */
import { defineStruct } from '../io/struct.ts';

// "Newstyle negotiation": the greeting magics.
// The two 64-bit ASCII magics exceed 2^53, so they are declared as byte fields and compared as bytes.
export const NBD_MAGIC: Uint8Array = new TextEncoder().encode('NBDMAGIC'); // 0x4e42444d41474943
export const IHAVEOPT: Uint8Array = new TextEncoder().encode('IHAVEOPT'); // 0x49484156454f5054, also option magic
export const OPTION_REPLY_MAGIC = 0x3e889045565a9;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// "Handshake flags" (server → client, 16 bits).
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
// "Client flags" (client → server, 32 bits).
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// "Transmission flags" (16 bits).
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_DF = 1 << 7;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_CACHE = 1 << 10;

// "Option types".
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;

// "Option reply types"; errors have bit 31 set.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_ERR_UNSUP = 2 ** 31 + 1;
export const REP_ERR_INVALID = 2 ** 31 + 3;
export const REP_ERR_UNKNOWN = 2 ** 31 + 6;
export const REP_ERR_SHUTDOWN = 2 ** 31 + 7;
export const REP_ERR_TOO_BIG = 2 ** 31 + 9;

// "NBD_REP_INFO" information types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// "Request types".
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

// "Command flags".
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_DF = 1 << 2;

// "Structured reply flags" and "Structured reply types".
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_ERROR = 2 ** 15 + 1;

// "Error values".
export const EPERM = 1;
export const EIO = 5;
export const EINVAL = 22;
export const EOVERFLOW = 75;
export const ESHUTDOWN = 108;

/** "Size constraints": strings (names, descriptions, messages) are limited to 4096 bytes. */
export const MAX_STRING = 4096;

/** "Newstyle negotiation": what the server sends first. */
export const serverGreeting = defineStruct(
  'nbd_server_greeting',
  [
    { name: 'magic', type: { bytes: 8 } },
    { name: 'optionMagic', type: { bytes: 8 } },
    { name: 'handshakeFlags', type: 'u16be' },
  ],
  18,
);

/** "Client flags": the client's answer to the greeting. */
export const clientFlags = defineStruct('nbd_client_flags', [{ name: 'flags', type: 'u32be' }], 4);

/** "Newstyle negotiation": every option request starts with this header, then `length` bytes of data. */
export const optionHeader = defineStruct(
  'nbd_option_header',
  [
    { name: 'magic', type: { bytes: 8 } },
    { name: 'option', type: 'u32be' },
    { name: 'length', type: 'u32be' },
  ],
  16,
);

/** "Fixed newstyle negotiation": every option reply starts with this header, then `length` bytes. */
export const optionReplyHeader = defineStruct(
  'nbd_option_reply_header',
  [
    { name: 'magic', type: 'u64be' },
    { name: 'option', type: 'u32be' },
    { name: 'type', type: 'u32be' },
    { name: 'length', type: 'u32be' },
  ],
  20,
);

/** "NBD_OPT_EXPORT_NAME" reply (followed by 124 zero bytes unless NO_ZEROES was negotiated). */
export const exportNameReply = defineStruct(
  'nbd_export_name_reply',
  [
    { name: 'size', type: 'u64be' },
    { name: 'transmissionFlags', type: 'u16be' },
  ],
  10,
);
export const EXPORT_NAME_PADDING = 124;

/** "NBD_OPT_INFO and NBD_OPT_GO" request data: name length, name, then `infoCount` and the requests. */
export const goNameLength = defineStruct('nbd_go_name_length', [{ name: 'nameLength', type: 'u32be' }], 4);
export const goInfoCount = defineStruct('nbd_go_info_count', [{ name: 'count', type: 'u16be' }], 2);
export const goInfoRequest = defineStruct('nbd_go_info_request', [{ name: 'type', type: 'u16be' }], 2);

/** "NBD_INFO_EXPORT" payload of an NBD_REP_INFO reply. */
export const infoExport = defineStruct(
  'nbd_info_export',
  [
    { name: 'type', type: 'u16be' },
    { name: 'size', type: 'u64be' },
    { name: 'transmissionFlags', type: 'u16be' },
  ],
  12,
);

/** "NBD_INFO_BLOCK_SIZE" payload of an NBD_REP_INFO reply. */
export const infoBlockSize = defineStruct(
  'nbd_info_block_size',
  [
    { name: 'type', type: 'u16be' },
    { name: 'minimum', type: 'u32be' },
    { name: 'preferred', type: 'u32be' },
    { name: 'maximum', type: 'u32be' },
  ],
  14,
);

/** "NBD_INFO_NAME" / "NBD_INFO_DESCRIPTION": the type, then the string to the end of the reply. */
export const infoStringHeader = defineStruct('nbd_info_string', [{ name: 'type', type: 'u16be' }], 2);

/** "NBD_REP_SERVER": name length, name, then a human-readable description to the end of the reply. */
export const repServerHeader = defineStruct('nbd_rep_server', [{ name: 'nameLength', type: 'u32be' }], 4);

/**
 * "Request message". The cookie is opaque (echoed back as is). The offset is kept as raw bytes because an
 * offset above 2^53 is a legal (out-of-range) request that must be answered with EINVAL, not a decode error;
 * `requestOffset` converts it.
 */
export const request = defineStruct(
  'nbd_request',
  [
    { name: 'magic', type: 'u32be' },
    { name: 'flags', type: 'u16be' },
    { name: 'type', type: 'u16be' },
    { name: 'cookie', type: { bytes: 8 } },
    { name: 'offset', type: { bytes: 8 } },
    { name: 'length', type: 'u32be' },
  ],
  28,
);

/** The request offset as a number; values beyond 2^53 lose precision but are beyond any export anyway. */
export function requestOffset(offset: Uint8Array): number {
  return Number(new DataView(offset.buffer, offset.byteOffset, 8).getBigUint64(0, false));
}

/** "Simple reply message" (followed by the data of a successful read). */
export const simpleReply = defineStruct(
  'nbd_simple_reply',
  [
    { name: 'magic', type: 'u32be' },
    { name: 'error', type: 'u32be' },
    { name: 'cookie', type: { bytes: 8 } },
  ],
  16,
);

/** "Structured reply chunk message" header, followed by `length` bytes of payload. */
export const structuredReplyHeader = defineStruct(
  'nbd_structured_reply',
  [
    { name: 'magic', type: 'u32be' },
    { name: 'flags', type: 'u16be' },
    { name: 'type', type: 'u16be' },
    { name: 'cookie', type: { bytes: 8 } },
    { name: 'length', type: 'u32be' },
  ],
  20,
);

/** "NBD_REPLY_TYPE_OFFSET_DATA" payload prefix; the data follows. */
export const offsetDataPrefix = defineStruct('nbd_offset_data', [{ name: 'offset', type: 'u64be' }], 8);

/** "NBD_REPLY_TYPE_ERROR" payload prefix; `messageLength` bytes of message follow. */
export const errorChunkPrefix = defineStruct(
  'nbd_error_chunk',
  [
    { name: 'error', type: 'u32be' },
    { name: 'messageLength', type: 'u16be' },
  ],
  6,
);

/** Names for log lines. */
export const commandNames: Record<number, string> = {
  [CMD_READ]: 'READ',
  [CMD_WRITE]: 'WRITE',
  [CMD_DISC]: 'DISC',
  [CMD_FLUSH]: 'FLUSH',
  [CMD_TRIM]: 'TRIM',
  [CMD_CACHE]: 'CACHE',
  [CMD_WRITE_ZEROES]: 'WRITE_ZEROES',
  [CMD_BLOCK_STATUS]: 'BLOCK_STATUS',
};

export const optionNames: Record<number, string> = {
  [OPT_EXPORT_NAME]: 'EXPORT_NAME',
  [OPT_ABORT]: 'ABORT',
  [OPT_LIST]: 'LIST',
  [OPT_STARTTLS]: 'STARTTLS',
  [OPT_INFO]: 'INFO',
  [OPT_GO]: 'GO',
  [OPT_STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
};
