/**
 * The one error type of the project. Every failure that reaches a caller is an `ErofsOciError` whose `code`
 * says what kind of failure it is; the CLI maps codes to exit statuses (SPEC §4).
 */
export type ErrorCode =
  // 2: the command line is wrong
  | 'usage'
  // 3: something named does not exist (image, tag, platform, layer, path, file)
  | 'not-found'
  // 4: credentials refused or permission denied
  | 'auth'
  // 5: input is corrupt or does not match its digest
  | 'corrupt'
  | 'digest-mismatch'
  // 6: a format feature, media type or kernel capability we do not support
  | 'unsupported'
  // 7: registry or network unavailable after retries
  | 'unavailable'
  // 1: everything else
  | 'io'
  | 'aborted'
  | 'internal';

const exitStatuses: Record<ErrorCode, number> = {
  usage: 2,
  'not-found': 3,
  auth: 4,
  corrupt: 5,
  'digest-mismatch': 5,
  unsupported: 6,
  unavailable: 7,
  io: 1,
  aborted: 1,
  internal: 1,
};

export interface ErrorOptions {
  cause?: unknown;
  /** A hint for the user, printed on its own line by the CLI. */
  hint?: string;
}

export class ErofsOciError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ErofsOciError';
    this.code = code;
    this.hint = options.hint;
  }
}

/** A corrupt-input error that names where in the input it was found. */
export class CorruptInputError extends ErofsOciError {
  readonly offset: number | undefined;
  constructor(message: string, offset?: number, options: ErrorOptions = {}) {
    super('corrupt', offset === undefined ? message : `${message} (at offset ${offset})`, options);
    this.offset = offset;
  }
}

export function exitStatusFor(error: unknown): number {
  if (error instanceof ErofsOciError) return exitStatuses[error.code];
  return 1;
}

export function isErofsOciError(error: unknown, code?: ErrorCode): error is ErofsOciError {
  return error instanceof ErofsOciError && (code === undefined || error.code === code);
}

/** The error an aborted operation ends with; the signal's reason is its cause. */
export function abortedError(signal: AbortSignal | undefined): ErofsOciError {
  return new ErofsOciError('aborted', 'operation aborted', { cause: signal?.reason });
}

/** Throws the signal's reason as an `aborted` error when the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortedError(signal);
}

/** Waits for `promise`, or rejects as soon as `signal` fires (the work behind `promise` goes on for others). */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortedError(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortedError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
