/**
 * Images in local layouts (SPEC §1): an OCI image layout directory (`oci:DIR[:TAG|@DIGEST]`,
 * https://github.com/opencontainers/image-spec/blob/main/image-layout.md), the same layout tarred
 * (`oci-archive:FILE[:TAG]`), and `docker save` output (`docker-archive:FILE[:NAME:TAG]`, whose
 * `manifest.json` lists config and layer files; we present it as a Docker schema 2 manifest).
 */
import { createHash } from 'node:crypto';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ImageBackend, RootManifest } from './backend-image.ts';
import { DigestVerifier, digestOf, parseDigest, shortDigest, verifyBytes } from './digest.ts';
import type { SignalOptions } from './image.ts';
import {
  type FileLocation,
  type LayoutFiles,
  readLayoutFile,
  readLocation,
  streamLocation,
} from './local-files.ts';
import { type Descriptor, MAX_MANIFEST_BYTES, parseManifest } from './manifest.ts';
import { MediaType } from './media-types.ts';

const REF_NAME = 'org.opencontainers.image.ref.name';

type BlobLocator = (digest: string) => Promise<FileLocation | undefined>;

/** The blob half of a layout backend: streams, ranged reads and manifest bytes by digest. */
function blobBackend(files: LayoutFiles, locate: BlobLocator): Omit<ImageBackend, 'root'> {
  const located = async (descriptor: Descriptor, what: string): Promise<FileLocation> => {
    parseDigest(descriptor.digest, what);
    const location = await locate(descriptor.digest);
    if (location === undefined) throw new ErofsOciError('not-found', `Cannot find ${what} in ${files.name}`);
    if (location.size !== descriptor.size) {
      throw new ErofsOciError(
        'digest-mismatch',
        `Cannot verify ${what} in ${files.name}: the file has ${location.size} bytes, its descriptor declares ${descriptor.size}`,
      );
    }
    return location;
  };
  return {
    async manifestBytes(descriptor, options) {
      throwIfAborted(options.signal);
      const what = `manifest ${descriptor.digest}`;
      return readLocation(await located(descriptor, what), 0, descriptor.size, `${what} in ${files.name}`);
    },
    async *openBlob(descriptor, options) {
      throwIfAborted(options.signal);
      const what = `blob ${shortDigest(descriptor.digest)}`;
      const location = await located(descriptor, what);
      const verifier = new DigestVerifier(descriptor.digest, descriptor.size, `${what} in ${files.name}`);
      try {
        for await (const chunk of streamLocation(location, options.signal)) {
          verifier.update(chunk);
          yield chunk;
        }
      } catch (error) {
        if (error instanceof ErofsOciError) throw error;
        if (options.signal?.aborted)
          throw new ErofsOciError('aborted', `Cannot read ${what} in ${files.name}: aborted`, {
            cause: error,
          });
        throw new ErofsOciError('io', `Cannot read ${what} in ${files.name}: ${(error as Error).message}`, {
          cause: error,
        });
      }
      verifier.finish();
    },
    async readRange(digest, offset, length, options) {
      throwIfAborted(options.signal);
      const location = await locate(digest);
      if (location === undefined)
        throw new ErofsOciError('not-found', `Cannot find blob ${shortDigest(digest)} in ${files.name}`);
      return readLocation(location, offset, length, `blob ${shortDigest(digest)} in ${files.name}`);
    },
    close: () => files.close(),
  };
}

function blobPath(digest: string): string {
  const { algorithm, hex } = parseDigest(digest);
  return `blobs/${algorithm}/${hex}`;
}

function parseJsonFile(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (error) {
    throw new ErofsOciError('corrupt', `Cannot parse ${what}: not valid JSON`, { cause: error });
  }
}

/** Does the ref name annotation of an `index.json` entry name `tag`? Tools write a tag or a full reference. */
function refNameMatches(refName: string | undefined, tag: string): boolean {
  if (refName === undefined) return false;
  if (refName === tag) return true;
  const colon = refName.lastIndexOf(':');
  return colon > refName.lastIndexOf('/') && refName.slice(colon + 1) === tag && !tag.includes('/');
}

/** A backend over an OCI image layout whose files `files` holds. */
export function ociLayoutBackend(
  files: LayoutFiles,
  selector: { tag?: string | undefined; digest?: string | undefined },
): ImageBackend {
  const locate: BlobLocator = (digest) => files.locate(blobPath(digest));
  const blobs = blobBackend(files, locate);
  return {
    ...blobs,
    async root(options: SignalOptions): Promise<RootManifest> {
      throwIfAborted(options.signal);
      const layoutBytes = await readLayoutFile(files, 'oci-layout', 64 * 1024);
      if (layoutBytes === undefined) {
        throw new ErofsOciError(
          'not-found',
          `Cannot open ${files.name}: it has no oci-layout file, so it is not an OCI image layout`,
        );
      }
      const layout = parseJsonFile(layoutBytes, `oci-layout of ${files.name}`) as {
        imageLayoutVersion?: unknown;
      };
      if (typeof layout?.imageLayoutVersion !== 'string' || !layout.imageLayoutVersion.startsWith('1.')) {
        throw new ErofsOciError(
          'unsupported',
          `Cannot open ${files.name}: image layout version ${JSON.stringify(layout?.imageLayoutVersion)}`,
        );
      }
      const indexBytes = await readLayoutFile(files, 'index.json', MAX_MANIFEST_BYTES);
      if (indexBytes === undefined)
        throw new ErofsOciError('not-found', `Cannot open ${files.name}: it has no index.json`);
      const index = parseManifest(indexBytes, `index.json of ${files.name}`, MediaType.ociIndex);
      if (index.kind !== 'index')
        throw new ErofsOciError('corrupt', `Cannot open ${files.name}: index.json is not an index`);
      const entries = index.manifests;

      let chosen: Descriptor | undefined;
      if (selector.digest !== undefined) {
        chosen = entries.find((entry) => entry.digest === selector.digest);
        if (chosen === undefined) {
          const location = await locate(selector.digest);
          if (location === undefined)
            throw new ErofsOciError('not-found', `Cannot find manifest ${selector.digest} in ${files.name}`);
          chosen = { mediaType: '', digest: selector.digest, size: location.size };
        }
      } else if (selector.tag !== undefined) {
        const tag = selector.tag;
        chosen = entries.find((entry) => refNameMatches(entry.annotations?.[REF_NAME], tag));
        if (chosen === undefined) throw notFoundTag(files.name, tag, entries);
      } else if (entries.length === 1) {
        chosen = entries[0];
      } else if (entries.length > 1 && entries.every((entry) => entry.platform !== undefined)) {
        // index.json is itself a multi-platform index (as crane and ko write it): select from it.
        return {
          bytes: indexBytes,
          descriptor: {
            mediaType: MediaType.ociIndex,
            digest: digestOf(indexBytes),
            size: indexBytes.byteLength,
          },
        };
      } else {
        throw notFoundTag(files.name, undefined, entries);
      }
      if (chosen === undefined)
        throw new ErofsOciError('not-found', `Cannot open ${files.name}: its index.json lists no images`);
      const bytes = await blobs.manifestBytes(chosen, options);
      verifyBytes(bytes, chosen.digest, chosen.size, `manifest ${chosen.digest} in ${files.name}`);
      return { bytes, descriptor: chosen };
    },
  };
}

function notFoundTag(name: string, tag: string | undefined, entries: readonly Descriptor[]): ErofsOciError {
  const tags = entries
    .map((entry) => entry.annotations?.[REF_NAME])
    .filter((t): t is string => t !== undefined);
  const offered = tags.length > 0 ? `it has ${tags.join(', ')}` : 'its images have no names';
  if (tag === undefined) {
    return new ErofsOciError(
      'not-found',
      `Cannot choose an image in ${name}: it holds ${entries.length}; ${offered}`,
      {
        hint: `name one as ${name}:TAG or ${name}@DIGEST`,
      },
    );
  }
  return new ErofsOciError('not-found', `Cannot find tag ${tag} in ${name}: ${offered}`);
}

interface DockerArchiveEntry {
  Config?: unknown;
  RepoTags?: unknown;
  Layers?: unknown;
}

/** A backend over `docker save` output; `reference` picks an image by one of its RepoTags. */
export async function dockerArchiveBackend(
  files: LayoutFiles,
  reference: string | undefined,
  options: SignalOptions = {},
): Promise<ImageBackend> {
  const manifestBytes = await readLayoutFile(files, 'manifest.json', MAX_MANIFEST_BYTES);
  if (manifestBytes === undefined) {
    throw new ErofsOciError(
      'not-found',
      `Cannot open ${files.name}: it has no manifest.json, so it is not docker save output`,
    );
  }
  const document = parseJsonFile(manifestBytes, `manifest.json of ${files.name}`);
  if (!Array.isArray(document) || document.length === 0) {
    throw new ErofsOciError('corrupt', `Cannot open ${files.name}: manifest.json is not a non-empty array`);
  }
  const entries = document as DockerArchiveEntry[];
  const tagsOf = (entry: DockerArchiveEntry) =>
    Array.isArray(entry.RepoTags) ? entry.RepoTags.filter((t): t is string => typeof t === 'string') : [];
  let entry: DockerArchiveEntry | undefined;
  if (reference !== undefined) {
    entry = entries.find((e) => tagsOf(e).some((t) => t === reference || t.endsWith(`/${reference}`)));
    if (entry === undefined) {
      const all = entries.flatMap(tagsOf);
      throw new ErofsOciError(
        'not-found',
        `Cannot find ${reference} in ${files.name}: it has ${all.join(', ') || 'no tagged images'}`,
      );
    }
  } else if (entries.length === 1) {
    entry = entries[0];
  } else {
    throw new ErofsOciError(
      'not-found',
      `Cannot choose an image in ${files.name}: it holds ${entries.length} (${entries.flatMap(tagsOf).join(', ')})`,
      {
        hint: `name one as ${files.name}:NAME:TAG`,
      },
    );
  }
  if (entry === undefined || typeof entry.Config !== 'string' || !Array.isArray(entry.Layers)) {
    throw new ErofsOciError(
      'corrupt',
      `Cannot open ${files.name}: a manifest.json entry lacks Config or Layers`,
    );
  }

  const paths = new Map<string, string>(); // digest → member
  const configPath = entry.Config;
  const configBytes = await readLayoutFile(files, configPath, 16 * 1024 * 1024);
  if (configBytes === undefined)
    throw new ErofsOciError('not-found', `Cannot find config ${configPath} in ${files.name}`);
  const config: Descriptor = {
    mediaType: MediaType.dockerConfig,
    digest: digestOf(configBytes),
    size: configBytes.byteLength,
  };
  paths.set(config.digest, configPath);
  const diffIds = (
    parseJsonFile(configBytes, `config of ${files.name}`) as { rootfs?: { diff_ids?: unknown } }
  )?.rootfs?.diff_ids;

  const layers: Descriptor[] = [];
  for (const [i, layerPath] of (entry.Layers as unknown[]).entries()) {
    throwIfAborted(options.signal);
    if (typeof layerPath !== 'string')
      throw new ErofsOciError('corrupt', `Cannot open ${files.name}: layer ${i} is not a path`);
    const location = await files.locate(layerPath);
    if (location === undefined)
      throw new ErofsOciError('not-found', `Cannot find layer ${layerPath} in ${files.name}`);
    const magic = await readLocation(
      location,
      0,
      Math.min(4, location.size),
      `layer ${layerPath} in ${files.name}`,
    );
    const gzip = magic[0] === 0x1f && magic[1] === 0x8b;
    const zstd = magic[0] === 0x28 && magic[1] === 0xb5 && magic[2] === 0x2f && magic[3] === 0xfd;
    const mediaType = gzip
      ? MediaType.dockerLayerGzip
      : zstd
        ? MediaType.ociLayerZstd
        : MediaType.dockerLayerTar;
    // Newer `docker save` names layers by digest; older ones use <id>/layer.tar, uncompressed, whose digest
    // is the config's diff_id. Otherwise the digest is computed once here.
    const byName = /^blobs\/(sha256|sha512)\/([0-9a-f]+)$/.exec(layerPath);
    const diffId =
      Array.isArray(diffIds) && typeof diffIds[i] === 'string' ? (diffIds[i] as string) : undefined;
    let digest: string;
    if (byName) digest = `${byName[1]}:${byName[2]}`;
    else if (!gzip && !zstd && diffId !== undefined) digest = diffId;
    else digest = await digestLocation(location, options.signal);
    paths.set(digest, layerPath);
    layers.push({ mediaType, digest, size: location.size });
  }

  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.dockerManifest, config, layers }, null, 2),
    'utf8',
  );
  const locate: BlobLocator = async (digest) => {
    const path = paths.get(digest);
    return path === undefined ? undefined : files.locate(path);
  };
  return {
    ...blobBackend(files, locate),
    async root() {
      return {
        bytes: manifest,
        descriptor: {
          mediaType: MediaType.dockerManifest,
          digest: digestOf(manifest),
          size: manifest.byteLength,
        },
      };
    },
  };
}

async function digestLocation(location: FileLocation, signal: AbortSignal | undefined): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of streamLocation(location, signal)) hash.update(chunk);
  return `sha256:${hash.digest('hex')}`;
}
