/**
 * Manifests and indexes: OCI image index and manifest, Docker manifest list and schema 2, and documents
 * without `mediaType` (allowed by OCI; judged by their content). Docker schema 1 is refused with an
 * 'unsupported' error. https://github.com/opencontainers/image-spec/blob/main/manifest.md
 */
import { ErofsOciError } from '../errors.ts';
import { parseDigest } from './digest.ts';
import { isImageManifestMediaType, isIndexMediaType, isSchema1MediaType, MediaType } from './media-types.ts';
import type { Platform } from './platform.ts';

/** A content descriptor (https://github.com/opencontainers/image-spec/blob/main/descriptor.md). */
export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly platform?: Platform | undefined;
  readonly annotations?: Readonly<Record<string, string>> | undefined;
  readonly urls?: readonly string[] | undefined;
  readonly artifactType?: string | undefined;
}

export type ParsedManifest =
  | { readonly kind: 'index'; readonly mediaType: string; readonly manifests: readonly Descriptor[] }
  | {
      readonly kind: 'image';
      readonly mediaType: string;
      readonly config: Descriptor;
      readonly layers: readonly Descriptor[];
    };

/** Manifests are small; a bigger document is refused rather than buffered (distribution's limit). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function corrupt(what: string, why: string): ErofsOciError {
  return new ErofsOciError('corrupt', `Cannot parse ${what}: ${why}`);
}

function parsePlatformField(value: unknown, what: string): Platform | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value) || typeof value.os !== 'string' || typeof value.architecture !== 'string') {
    throw corrupt(what, 'platform needs string fields os and architecture');
  }
  const variant = typeof value.variant === 'string' && value.variant !== '' ? value.variant : undefined;
  return { os: value.os, architecture: value.architecture, variant };
}

export function parseDescriptor(value: unknown, what: string): Descriptor {
  if (!isObject(value)) throw corrupt(what, 'descriptor is not an object');
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== 'string' || mediaType === '') throw corrupt(what, 'descriptor has no mediaType');
  if (typeof digest !== 'string') throw corrupt(what, 'descriptor has no digest');
  try {
    parseDigest(digest, `digest in ${what}`);
  } catch (error) {
    if (error instanceof ErofsOciError && error.code === 'unsupported') throw error;
    throw corrupt(what, `descriptor digest ${JSON.stringify(digest)} is not valid`);
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw corrupt(what, `descriptor ${digest} has an invalid size ${JSON.stringify(size)}`);
  }
  let annotations: Record<string, string> | undefined;
  if (isObject(value.annotations)) {
    annotations = {};
    for (const [key, item] of Object.entries(value.annotations))
      if (typeof item === 'string') annotations[key] = item;
  }
  const urls = Array.isArray(value.urls)
    ? value.urls.filter((url): url is string => typeof url === 'string')
    : undefined;
  return {
    mediaType,
    digest,
    size,
    platform: parsePlatformField(value.platform, what),
    annotations,
    urls,
    artifactType: typeof value.artifactType === 'string' ? value.artifactType : undefined,
  };
}

/**
 * Parses a manifest or index. The type comes from the document's `mediaType`, else from `contentType`
 * (the HTTP header or the descriptor that pointed here), else from its shape.
 */
export function parseManifest(bytes: Uint8Array, what: string, contentType?: string): ParsedManifest {
  let document: unknown;
  try {
    document = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new ErofsOciError('corrupt', `Cannot parse ${what}: not valid JSON`, { cause: error });
  }
  if (!isObject(document)) throw corrupt(what, 'not a JSON object');

  const declared =
    typeof document.mediaType === 'string' && document.mediaType !== '' ? document.mediaType : undefined;
  const hinted = contentType?.split(';')[0]?.trim();
  if (document.schemaVersion === 1 || (declared !== undefined && isSchema1MediaType(declared))) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot use ${what}: Docker schema 1 manifests are not supported`,
      {
        hint: 'convert the image to schema 2 or OCI, e.g. with `skopeo copy --format v2s2`',
      },
    );
  }
  if (document.schemaVersion !== 2) {
    throw corrupt(what, `schemaVersion is ${JSON.stringify(document.schemaVersion)}, expected 2`);
  }

  let mediaType = declared;
  if (
    mediaType === undefined &&
    hinted !== undefined &&
    (isIndexMediaType(hinted) || isImageManifestMediaType(hinted))
  ) {
    mediaType = hinted;
  }
  if (mediaType === undefined) {
    if (Array.isArray(document.manifests)) mediaType = MediaType.ociIndex;
    else if (isObject(document.config) && Array.isArray(document.layers)) mediaType = MediaType.ociManifest;
    else throw corrupt(what, 'it has neither manifests nor config and layers');
  }

  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(document.manifests)) throw corrupt(what, `${mediaType} without a manifests array`);
    const manifests = document.manifests.map((entry, i) => parseDescriptor(entry, `${what} manifests[${i}]`));
    return { kind: 'index', mediaType, manifests };
  }
  if (isImageManifestMediaType(mediaType)) {
    if (!Array.isArray(document.layers)) throw corrupt(what, `${mediaType} without a layers array`);
    const config = parseDescriptor(document.config, `${what} config`);
    const layers = document.layers.map((entry, i) => parseDescriptor(entry, `${what} layers[${i}]`));
    return { kind: 'image', mediaType, config, layers };
  }
  throw new ErofsOciError(
    'unsupported',
    `Cannot use ${what}: media type ${JSON.stringify(mediaType)} is not an image`,
  );
}
