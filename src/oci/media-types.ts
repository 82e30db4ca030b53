/**
 * OCI and Docker media types, and what each layer type means for us (SPEC §1, §2 `mount`).
 * References: https://github.com/opencontainers/image-spec/blob/main/media-types.md and
 * https://github.com/distribution/distribution/blob/main/docs/content/spec/manifest-v2-2.md
 */
import { ErofsOciError } from '../errors.ts';

export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  /** Not registered by Docker, but what `docker save` layers are called by containers/image. */
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  /** EROFS-native layers (SPEC §3): the type we write. */
  erofsLayer: 'application/vnd.erofs.layer.v1',
  erofsLayerZstd: 'application/vnd.erofs.layer.v1+zstd',
  erofs: 'application/vnd.erofs',
} as const;

/** The `Accept` header for manifest requests: every manifest type we can read, preferred first. */
export const MANIFEST_ACCEPT = [
  MediaType.ociIndex,
  MediaType.ociManifest,
  MediaType.dockerManifestList,
  MediaType.dockerManifest,
].join(', ');

export type Compression = 'none' | 'gzip' | 'zstd';

/** What a layer blob holds: a tar stream (possibly compressed) or an EROFS image. */
export type LayerFormat =
  | { readonly kind: 'tar'; readonly compression: Compression }
  | { readonly kind: 'erofs'; readonly compression: 'none' | 'zstd' };

const tarLayers = new Map<string, Compression>([
  [MediaType.ociLayerTar, 'none'],
  [MediaType.ociLayerGzip, 'gzip'],
  [MediaType.ociLayerZstd, 'zstd'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar', 'none'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', 'gzip'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+zstd', 'zstd'],
  [MediaType.dockerLayerTar, 'none'],
  [MediaType.dockerLayerGzip, 'gzip'],
  [MediaType.dockerForeignLayerGzip, 'gzip'],
]);

/** Returns the layer format for `mediaType`, or undefined when it is not a layer type we know. */
export function tryLayerFormat(mediaType: string): LayerFormat | undefined {
  const compression = tarLayers.get(mediaType);
  if (compression !== undefined) return { kind: 'tar', compression };
  if (mediaType === MediaType.erofsLayerZstd || mediaType.endsWith('.erofs+zstd'))
    return { kind: 'erofs', compression: 'zstd' };
  if (mediaType === MediaType.erofsLayer || mediaType === MediaType.erofs || mediaType.endsWith('.erofs')) {
    return { kind: 'erofs', compression: 'none' };
  }
  return undefined;
}

/** Like `tryLayerFormat`, but an unknown type is an 'unsupported' error naming it. */
export function layerFormat(mediaType: string, what = 'layer'): LayerFormat {
  const format = tryLayerFormat(mediaType);
  if (format === undefined) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot use ${what}: media type ${JSON.stringify(mediaType)} is not supported`,
      {
        hint: 'supported layers are OCI/Docker tar layers (uncompressed, gzip, zstd) and EROFS layers',
      },
    );
  }
  return format;
}

export function isIndexMediaType(mediaType: string): boolean {
  return mediaType === MediaType.ociIndex || mediaType === MediaType.dockerManifestList;
}

export function isImageManifestMediaType(mediaType: string): boolean {
  return mediaType === MediaType.ociManifest || mediaType === MediaType.dockerManifest;
}

export function isSchema1MediaType(mediaType: string): boolean {
  return mediaType === MediaType.dockerSchema1 || mediaType === MediaType.dockerSchema1Signed;
}
