/** Public API of the OCI layer: image sources (registry and local layouts) and their building blocks. */
export type { AuthOptions, Credential } from './credentials.ts';
export { lookupCredentials } from './credentials.ts';
export { digestOf, isDigest, parseDigest } from './digest.ts';
export type {
  Descriptor,
  Image,
  ImageSource,
  LayerDescriptor,
  ManifestDescriptor,
  RangeReader,
  RootReader,
  SignalOptions,
} from './image.ts';
export { blobByteSource, isRangeReader, isRootReader, readBlob, readConfig } from './image.ts';
export type { Compression, LayerFormat } from './media-types.ts';
export {
  isImageManifestMediaType,
  isIndexMediaType,
  layerFormat,
  MediaType,
  tryLayerFormat,
} from './media-types.ts';
export { parseManifest } from './manifest.ts';
export type { Platform } from './platform.ts';
export {
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  parsePlatform,
  platformMatches,
} from './platform.ts';
export type { RegistryReference, SourceReference } from './reference.ts';
export { formatRegistryReference, parseRegistryReference, parseSourceReference } from './reference.ts';
export { RegistryClient, type RegistryClientOptions } from './registry-client.ts';
export { type OpenImageSourceOptions, openImageSource, openRegistryImage } from './source.ts';
