/**
 * One `ImageSource` implementation over a small backend, shared by the registry and the local layouts:
 * the backend fetches the top manifest, manifests an index points to, and blobs; this file does platform
 * selection through indexes (SPEC §1 "Image selection") and caches the resolution.
 */
import { ErofsOciError } from '../errors.ts';
import { verifyBytes } from './digest.ts';
import type {
  Image,
  ImageSource,
  RootReader,
  LayerDescriptor,
  ManifestDescriptor,
  RangeReader,
  RangeReadOptions,
  SignalOptions,
} from './image.ts';
import { type Descriptor, MAX_MANIFEST_BYTES, type ParsedManifest, parseManifest } from './manifest.ts';
import { foldChunkIndexLayers } from './chunk-index-layers.ts';
import { formatPlatform, type Platform, selectPlatform } from './platform.ts';

export interface RootManifest {
  readonly bytes: Uint8Array;
  /** Digest and size are of `bytes`; `mediaType` may be a hint (HTTP Content-Type) or empty. */
  readonly descriptor: Descriptor;
}

export interface ImageBackend {
  /** The manifest or index the reference names, verified by the backend. */
  root(options: SignalOptions): Promise<RootManifest>;
  /** The bytes of a manifest an index points to (verified here). */
  manifestBytes(descriptor: Descriptor, options: SignalOptions): Promise<Uint8Array>;
  openBlob(descriptor: Descriptor, options: SignalOptions): AsyncIterable<Uint8Array>;
  readRange(digest: string, offset: number, length: number, options: RangeReadOptions): Promise<Uint8Array>;
  close(): Promise<void>;
}

interface Resolved {
  readonly manifest: ManifestDescriptor;
  readonly parsed: Extract<ParsedManifest, { kind: 'image' }>;
}

/** Indexes may nest (an index of indexes); more than this is refused rather than followed forever. */
const MAX_INDEX_DEPTH = 4;

export class BackendImage implements ImageSource, RangeReader, RootReader {
  readonly name: string;
  readonly platform: Platform;
  readonly #backend: ImageBackend;
  #resolved: Promise<Resolved> | undefined;

  constructor(name: string, platform: Platform, backend: ImageBackend) {
    this.name = name;
    this.platform = platform;
    this.#backend = backend;
  }

  #resolve(options: SignalOptions): Promise<Resolved> {
    if (this.#resolved === undefined) {
      const attempt = this.#doResolve(options);
      this.#resolved = attempt;
      // An aborted or failed resolution is not cached: the next caller tries again.
      attempt.catch(() => {
        if (this.#resolved === attempt) this.#resolved = undefined;
      });
    }
    return this.#resolved;
  }

  async #doResolve(options: SignalOptions): Promise<Resolved> {
    const root = await this.#backend.root(options);
    let descriptor: Descriptor = root.descriptor;
    let parsed = parseManifest(root.bytes, `manifest of ${this.name}`, root.descriptor.mediaType);
    let index: Descriptor | undefined;
    for (let depth = 0; parsed.kind === 'index'; depth++) {
      if (depth >= MAX_INDEX_DEPTH) {
        throw new ErofsOciError(
          'unsupported',
          `Cannot use ${this.name}: indexes nested more than ${MAX_INDEX_DEPTH} deep`,
        );
      }
      index ??= { ...descriptor, mediaType: parsed.mediaType };
      const candidates = parsed.manifests;
      const chosen = selectPlatform(candidates, this.platform, `index ${this.name}`);
      if (chosen.size > MAX_MANIFEST_BYTES) {
        throw new ErofsOciError(
          'unsupported',
          `Cannot use manifest ${chosen.digest} of ${this.name}: ${chosen.size} bytes is too large`,
        );
      }
      const bytes = await this.#backend.manifestBytes(chosen, options);
      verifyBytes(bytes, chosen.digest, chosen.size, `manifest ${chosen.digest} of ${this.name}`);
      descriptor = chosen;
      parsed = parseManifest(
        bytes,
        `manifest ${chosen.digest} of ${this.name} (${formatPlatform(this.platform)})`,
        chosen.mediaType,
      );
    }
    return { manifest: { ...descriptor, mediaType: parsed.mediaType, index }, parsed };
  }

  async root(options: SignalOptions = {}) {
    const root = await this.#backend.root(options);
    const parsed = parseManifest(root.bytes, `manifest of ${this.name}`, root.descriptor.mediaType);
    return {
      descriptor: { ...root.descriptor, mediaType: parsed.mediaType },
      bytes: root.bytes,
      isIndex: parsed.kind === 'index',
    };
  }

  async manifestBytes(descriptor: Descriptor, options: SignalOptions = {}): Promise<Uint8Array> {
    if (descriptor.size > MAX_MANIFEST_BYTES) {
      throw new ErofsOciError(
        'unsupported',
        `Cannot use manifest ${descriptor.digest} of ${this.name}: ${descriptor.size} bytes is too large`,
      );
    }
    const bytes = await this.#backend.manifestBytes(descriptor, options);
    verifyBytes(bytes, descriptor.digest, descriptor.size, `manifest ${descriptor.digest} of ${this.name}`);
    return bytes;
  }

  imageOf(descriptor: Descriptor): Image {
    const backend = this.#backend;
    const pinned: ImageBackend = {
      root: async (options) => ({ bytes: await this.manifestBytes(descriptor, options), descriptor }),
      manifestBytes: (d, options) => backend.manifestBytes(d, options),
      openBlob: (d, options) => backend.openBlob(d, options),
      readRange: (digest, offset, length, options) => backend.readRange(digest, offset, length, options),
      close: async () => {},
    };
    return new BackendImage(`${this.name}@${descriptor.digest}`, this.platform, pinned);
  }

  async manifest(options: SignalOptions = {}): Promise<ManifestDescriptor> {
    return (await this.#resolve(options)).manifest;
  }

  async config(options: SignalOptions = {}): Promise<Descriptor> {
    return (await this.#resolve(options)).parsed.config;
  }

  async layers(options: SignalOptions = {}): Promise<LayerDescriptor[]> {
    const { parsed } = await this.#resolve(options);
    return foldChunkIndexLayers(parsed.layers, this.name);
  }

  openBlob(descriptor: Descriptor, options: SignalOptions = {}): AsyncIterable<Uint8Array> {
    return this.#backend.openBlob(descriptor, options);
  }

  readRange(
    digest: string,
    offset: number,
    length: number,
    options: RangeReadOptions = {},
  ): Promise<Uint8Array> {
    return this.#backend.readRange(digest, offset, length, options);
  }

  close(): Promise<void> {
    return this.#backend.close();
  }
}
