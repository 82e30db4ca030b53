/**
 * `convert --all-platforms` and `--with-source`: the output is an image index (erofs-image-spec §6).
 * `--all-platforms` converts every image of the source's index that names a real platform (entries with
 * platform `unknown/unknown`, such as build attestations, and entries already marked `erofs` are left out);
 * otherwise the one platform `--platform` (or the host) picks. `--with-source` copies the source's
 * manifests, configs and layers to DEST as they are and lists them first, the EROFS manifests after them
 * (§6: tar-bearing entries first, for clients that take the first match), so one tag serves clients of
 * either kind; every EROFS entry's platform carries `erofs` in `os.features` (§5.4). Every manifest is
 * stored by digest before the index, which goes last.
 */
import { ErofsOciError } from '../errors.ts';
import {
  type Descriptor,
  type Image,
  type ImageSource,
  isImageManifestMediaType,
  isIndexMediaType,
  MediaType,
  parseManifest,
  type RootReader,
  readConfig,
} from '../oci/index.ts';
import {
  type ConvertedImageReport,
  type ConvertOptions,
  type ConvertSummary,
  convertManifest,
  type ImageSink,
  type LayerReport,
} from './convert.ts';
import { addErofsFeature, type Blob, jsonBlob } from './documents.ts';

export interface IndexOptions extends ConvertOptions {
  allPlatforms?: boolean;
  withSource?: boolean;
}

type RawDescriptor = Record<string, unknown> & { platform?: Record<string, unknown> };

export async function convertToIndex(
  image: ImageSource & RootReader,
  sink: ImageSink,
  options: IndexOptions,
): Promise<ConvertSummary> {
  const started = performance.now();
  const signal = options.signal;
  const root = await image.root({ signal });
  const entries: RawDescriptor[] = [];
  const images: ConvertedImageReport[] = [];
  const layers: LayerReport[] = [];

  const convertOne = async (one: Image, platform: Record<string, unknown> | undefined) => {
    const converted = await convertManifest(one, sink, options, layers.length);
    await sink.putManifest(converted.manifest, signal);
    const erofsPlatform: Record<string, unknown> | undefined = platform
      ? { ...platform, 'os.features': addErofsFeature(platform['os.features']) }
      : converted.platform;
    entries.push(entryOf(converted.manifest, erofsPlatform));
    images.push({ platform: erofsPlatform, manifest: converted.manifest.digest, layers: converted.layers });
    layers.push(...converted.layers);
  };

  let sourceEntries: RawDescriptor[] = [];
  if (root.isIndex) {
    const raw = rawManifests(root.bytes, image.name);
    const parsed = parseManifest(root.bytes, `index of ${image.name}`, root.descriptor.mediaType);
    const listed = parsed.kind === 'index' ? parsed.manifests : [];
    if (options.withSource) {
      for (const entry of listed) {
        if (isIndexMediaType(entry.mediaType)) {
          throw new ErofsOciError(
            'unsupported',
            `--with-source: ${image.name} has a nested index (${entry.digest})`,
          );
        }
        await copyImage(image, sink, entry, await image.manifestBytes(entry, { signal }), signal);
      }
      sourceEntries = raw;
    }
    if (options.allPlatforms) {
      for (const [i, entry] of listed.entries()) {
        const platform = raw[i]?.platform;
        if (!isImageManifestMediaType(entry.mediaType) || !platform) continue;
        if (platform.os === 'unknown' || hasErofs(platform)) continue;
        await convertOne(image.imageOf(entry), platform);
      }
      if (images.length === 0) {
        throw new ErofsOciError('not-found', `${image.name} lists no platform image to convert`);
      }
    } else {
      const chosen = await image.manifest({ signal });
      const platform = raw.find((entry) => entry.digest === chosen.digest)?.platform;
      await convertOne(image, platform);
    }
  } else {
    if (options.withSource) {
      await copyImage(image, sink, root.descriptor, root.bytes, signal);
      const config = await readConfig(image, { signal });
      sourceEntries = [entryOf(root.descriptor, configPlatform(config))];
    }
    await convertOne(image, undefined);
  }
  const index = jsonBlob(MediaType.ociIndex, {
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [...sourceEntries, ...entries],
  });
  await sink.putRoot(index, undefined, signal);
  return {
    manifest: { mediaType: index.mediaType, digest: index.digest, size: index.size },
    layers,
    images,
    seconds: (performance.now() - started) / 1000,
  };
}

/** A source manifest with its config and layers, copied to DEST as they are (each verified on the way). */
async function copyImage(
  image: Image,
  sink: ImageSink,
  descriptor: Descriptor,
  bytes: Uint8Array,
  signal: AbortSignal | undefined,
): Promise<void> {
  const parsed = parseManifest(bytes, `manifest ${descriptor.digest}`, descriptor.mediaType);
  if (parsed.kind !== 'image')
    throw new ErofsOciError('unsupported', `${descriptor.digest} is not an image manifest`);
  for (const blob of [parsed.config, ...parsed.layers]) {
    await sink.copyBlob(blob, (s) => image.openBlob(blob, { signal: s }), signal);
  }
  const manifest: Blob = {
    mediaType: parsed.mediaType,
    digest: descriptor.digest,
    size: descriptor.size,
    bytes,
  };
  await sink.putManifest(manifest, signal);
}

function rawManifests(bytes: Uint8Array, name: string): RawDescriptor[] {
  const document = JSON.parse(new TextDecoder().decode(bytes)) as { manifests?: unknown };
  if (!Array.isArray(document.manifests))
    throw new ErofsOciError('corrupt', `index of ${name} has no manifests`);
  return document.manifests as RawDescriptor[];
}

function hasErofs(platform: Record<string, unknown>): boolean {
  const features = platform['os.features'];
  return Array.isArray(features) && features.includes('erofs');
}

function configPlatform(config: Record<string, unknown>): Record<string, unknown> | undefined {
  if (typeof config.os !== 'string' || typeof config.architecture !== 'string') return undefined;
  return {
    architecture: config.architecture,
    os: config.os,
    ...(typeof config.variant === 'string' ? { variant: config.variant } : {}),
    ...(Array.isArray(config['os.features']) ? { 'os.features': config['os.features'] } : {}),
  };
}

function entryOf(
  manifest: { mediaType: string; digest: string; size: number },
  platform: Record<string, unknown> | undefined,
): RawDescriptor {
  return {
    mediaType: manifest.mediaType,
    digest: manifest.digest,
    size: manifest.size,
    ...(platform ? { platform } : {}),
  };
}
