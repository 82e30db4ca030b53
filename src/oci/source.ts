/**
 * `openImageSource`: any image SOURCE of SPEC §1 — a registry reference or a local layout — as one
 * `ImageSource`, so the build, mount and serve commands consume them all the same way.
 */
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import { BackendImage, type ImageBackend } from './backend-image.ts';
import type { AuthOptions } from './credentials.ts';
import type { ImageSource } from './image.ts';
import { dockerArchiveBackend, ociLayoutBackend } from './layout-image.ts';
import { type LayoutFiles, openArchiveFiles, openDirectoryFiles } from './local-files.ts';
import { hostPlatform, type Platform, parsePlatform } from './platform.ts';
import { formatRegistryReference, parseSourceReference, type RegistryReference } from './reference.ts';
import { RegistryClient, type RegistryClientOptions } from './registry-client.ts';

export interface OpenImageSourceOptions {
  /** `--platform OS/ARCH[/VARIANT]`; default: the host's platform. */
  platform?: string | Platform;
  auth?: AuthOptions;
  insecure?: boolean;
  caFile?: string;
  /** Time budget of one registry operation including retries (default 30 s). */
  timeoutMs?: number;
  /** Drop and resume a transfer that stalls this long (default 30 s). */
  stallTimeoutMs?: number;
  signal?: AbortSignal;
}

export async function openImageSource(
  ref: string,
  options: OpenImageSourceOptions = {},
): Promise<ImageSource> {
  throwIfAborted(options.signal);
  const platform =
    options.platform === undefined
      ? hostPlatform()
      : typeof options.platform === 'string'
        ? parsePlatform(options.platform)
        : options.platform;
  const reference = parseSourceReference(ref);
  switch (reference.kind) {
    case 'registry':
      return openRegistryImage(reference, platform, options);
    case 'oci': {
      const files = await openDirectoryFiles(reference.path, `oci:${reference.path}`);
      const name = `oci:${reference.path}${reference.digest ? `@${reference.digest}` : reference.tag ? `:${reference.tag}` : ''}`;
      return new BackendImage(name, platform, ociLayoutBackend(files, reference));
    }
    case 'oci-archive': {
      const files = await openArchiveFiles(reference.path, `oci-archive:${reference.path}`, options);
      const name = `oci-archive:${reference.path}${reference.tag ? `:${reference.tag}` : ''}`;
      return new BackendImage(name, platform, ociLayoutBackend(files, { tag: reference.tag }));
    }
    case 'docker-archive': {
      const files = await openArchiveFiles(reference.path, `docker-archive:${reference.path}`, options);
      const backend = await closeOnError(files, () =>
        dockerArchiveBackend(files, reference.reference, options),
      );
      const name = `docker-archive:${reference.path}${reference.reference ? `:${reference.reference}` : ''}`;
      return new BackendImage(name, platform, backend);
    }
  }
}

async function closeOnError<T>(files: LayoutFiles, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    await files.close();
    throw error;
  }
}

/** An image in a registry; nothing is fetched until the first method call. */
export async function openRegistryImage(
  reference: RegistryReference,
  platform: Platform,
  options: RegistryClientOptions = {},
): Promise<BackendImage> {
  const client = await RegistryClient.open(reference.registry, reference.repository, options);
  const manifestRef = reference.digest ?? reference.tag;
  if (manifestRef === undefined)
    throw new ErofsOciError('internal', 'registry reference without tag or digest');
  const backend: ImageBackend = {
    async root({ signal }) {
      const manifest = await client.getManifest(manifestRef, { signal });
      return {
        bytes: manifest.bytes,
        descriptor: {
          mediaType: manifest.contentType ?? '',
          digest: manifest.digest,
          size: manifest.bytes.byteLength,
        },
      };
    },
    async manifestBytes(descriptor, { signal }) {
      return (await client.getManifest(descriptor.digest, { signal })).bytes;
    },
    openBlob: (descriptor, { signal }) => client.openBlob(descriptor, { signal }),
    readRange: (digest, offset, length, { signal, onData }) =>
      client.readRange(digest, offset, length, { signal, onData }),
    close: () => client.close(),
  };
  return new BackendImage(formatRegistryReference(reference), platform, backend);
}
