import type { TarEntry } from '../tar/reader.ts';

/**
 * One entry of a build source, whatever the source: a tar entry, or an entry of a directory walk, which can
 * also be a socket (something a tar cannot carry) and has no tar header or data offset.
 */
export interface SourceEntry extends Omit<TarEntry, 'type' | 'headerOffset' | 'dataOffset'> {
  type: TarEntry['type'] | 'socket';
  /** Where the entry's header starts in the (uncompressed) source, for error messages. */
  headerOffset: number | undefined;
  /** Offset of the entry's data in the uncompressed stream (tar sources; index mode addresses data by it). */
  dataOffset?: number;
  body(): AsyncIterable<Uint8Array>;
}
