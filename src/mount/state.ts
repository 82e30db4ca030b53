/**
 * Recovery records of lazy mounts: one directory per mount under the state directory
 * (`$EROFS_OCI_STATE_DIR`, default `/run/erofs-oci`, mode 0700) holding `record.json` (mode 0600), the
 * sockets, device files, layer mount points, caches and logs of that mount. A record holds what `reattach`
 * needs to start the serving side again, and never a secret: credentials are looked up again.
 */
import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErofsOciError } from '../errors.ts';

export const RECORD_VERSION = 1;

export interface LayerRecord {
  /** Position in the image's layer list (0 = bottom). */
  index: number;
  digest: string;
  mediaType: string;
  size: number;
  /** `erofs`: the blob is an EROFS image; `hybrid`: `[tarIndex][uncompressed tar]`. */
  kind: 'erofs' | 'hybrid';
  tarIndex?: string;
  zinfo?: string;
  /**
   * The descriptor's annotations from the digest-pinned manifest (the chunk index is found and pinned by
   * them), and how its bytes are checked: per chunk before serving, or the whole blob once complete.
   */
  annotations?: Record<string, string>;
  /** The standalone chunk-index layer that follows it in the manifest (erofs-image-spec §3.4.3). */
  chunkIndex?: ChunkIndexLayer;
  verification?: 'chunk-verified' | 'whole-blob';
  /** NBD socket of the serving process. */
  socket: string;
  /** The regular file the FUSE device holder serves (fuse backend) or the NBD device (nbd backend). */
  device: string;
  /** Where this layer's EROFS is mounted (also the final mount point for a lone layer without --upper). */
  layerMount: string;
  serverPid: number;
  /** The device holder (fuse backend) or nbd-client (nbd backend); 0 when none. */
  devicePid: number;
}

/** A standalone chunk-index layer's descriptor, as the pinned manifest lists it. */
export interface ChunkIndexLayer {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** Registry options to start servers with again; credentials themselves are never stored. */
export interface RegistrySettings {
  authfile?: string;
  username?: string;
  /** The password came from stdin: reattach needs it again the same way. */
  passwordStdin?: boolean;
  insecure?: boolean;
  caFile?: string;
  timeout?: string;
}

/**
 * What the serving process of a mount (`erofs-oci serve-layers CONFIG.json`, one per mount) serves: each
 * layer's blob on its own unix socket. Written 0600 beside the record; holds no secret (a password comes
 * on the process's stdin).
 */
export interface LayerServerConfig {
  /** The image, pinned to its manifest digest. */
  source: string;
  registry: RegistrySettings;
  layers: {
    digest: string;
    size: number;
    mediaType: string;
    socket: string;
    cacheDir: string;
    tarIndex?: string;
    zinfo?: string;
    annotations?: Record<string, string>;
    chunkIndex?: ChunkIndexLayer;
  }[];
}

export interface MountRecord {
  version: number;
  mountpoint: string;
  /** The source as the user gave it, and the same pinned to the resolved manifest digest. */
  source: string;
  pinnedSource: string;
  manifestDigest: string;
  platform: string;
  backend: 'fuse' | 'nbd';
  registry: RegistrySettings;
  upper?: string;
  work?: string;
  ioTimeoutMs: number;
  layers: LayerRecord[];
  createdAt: string;
}

export function stateRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.EROFS_OCI_STATE_DIR || '/run/erofs-oci';
}

/** The disk cache of layer `index` of the mount whose directory is `dir`. */
export function layerCacheDir(dir: string, index: number): string {
  return join(dir, `cache-${index}`);
}

/** The directory of the mount at `mountpoint` (an absolute, resolved path). */
export function mountDir(root: string, mountpoint: string): string {
  return join(root, `mount-${createHash('sha256').update(mountpoint).digest('hex').slice(0, 16)}`);
}

export async function ensurePrivateDir(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  // mkdir's mode is masked by the umask and leaves existing directories alone.
  await chmod(path, 0o700);
}

export async function writeRecord(dir: string, record: MountRecord): Promise<void> {
  const path = join(dir, 'record.json');
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
  await rename(temporary, path);
}

export async function readRecord(dir: string): Promise<MountRecord | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, 'record.json'), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const record = JSON.parse(text) as MountRecord;
    if (record.version !== RECORD_VERSION) throw new Error(`record version ${record.version}`);
    return record;
  } catch (error) {
    throw new ErofsOciError(
      'corrupt',
      `cannot read the recovery record in ${dir}: ${(error as Error).message}`,
    );
  }
}

export async function listRecords(root: string): Promise<MountRecord[]> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const records: MountRecord[] = [];
  for (const name of names.filter((n) => n.startsWith('mount-')).sort()) {
    const record = await readRecord(join(root, name));
    if (record) records.push(record);
  }
  return records;
}

export async function removeMountDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
