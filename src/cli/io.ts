/** What a command handler gets from the process: streams, whether stderr is a terminal, and a signal. */
export interface CommandIo {
  stdin: AsyncIterable<Uint8Array>;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stderrIsTty: boolean;
  signal: AbortSignal;
}
