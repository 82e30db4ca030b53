/**
 * Platforms (https://github.com/opencontainers/image-spec/blob/main/image-index.md#platform-variants) and
 * how we choose one from an index (SPEC §1 "Image selection"). Normalisation follows containerd's
 * `platforms.Normalize`: `aarch64` is `arm64`, `arm64` without a variant is `arm64/v8`, `arm` without a
 * variant is `arm/v7`.
 */
import process from 'node:process';
import { ErofsOciError } from '../errors.ts';

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string | undefined;
}

const architectureAliases: Record<string, { architecture: string; variant?: string }> = {
  x86_64: { architecture: 'amd64' },
  'x86-64': { architecture: 'amd64' },
  aarch64: { architecture: 'arm64' },
  armhf: { architecture: 'arm', variant: 'v7' },
  armel: { architecture: 'arm', variant: 'v6' },
  i386: { architecture: '386' },
  i686: { architecture: '386' },
};

/** The variant an architecture has when none is written. */
const defaultVariants: Record<string, string> = { arm64: 'v8', arm: 'v7' };

export function normalizePlatform(platform: Platform): Platform {
  const os = platform.os.toLowerCase();
  let architecture = platform.architecture.toLowerCase();
  let variant =
    platform.variant === undefined || platform.variant === '' ? undefined : platform.variant.toLowerCase();
  const alias = architectureAliases[architecture];
  if (alias) {
    architecture = alias.architecture;
    variant ??= alias.variant;
  }
  if (architecture === 'arm64' && variant === '8') variant = 'v8';
  if (architecture === 'arm' && variant !== undefined && /^[5-8]$/.test(variant)) variant = `v${variant}`;
  variant ??= defaultVariants[architecture];
  return variant === undefined ? { os, architecture } : { os, architecture, variant };
}

/** Parses `OS/ARCH[/VARIANT]`. */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((part) => part === '')) {
    throw new ErofsOciError('usage', `Invalid platform ${JSON.stringify(text)}: expected OS/ARCH[/VARIANT]`);
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return { os, architecture, variant };
}

export function formatPlatform(platform: Platform): string {
  const base = `${platform.os}/${platform.architecture}`;
  return platform.variant ? `${base}/${platform.variant}` : base;
}

const nodeArchitectures: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  loong64: 'loong64',
  mips64el: 'mips64le',
};

/** The platform of this machine, as an image for it would declare it. */
export function hostPlatform(): Platform {
  const architecture = nodeArchitectures[process.arch] ?? process.arch;
  let variant: string | undefined;
  if (architecture === 'arm') {
    const armVersion = (process.config.variables as Record<string, unknown>).arm_version;
    variant = typeof armVersion === 'string' || typeof armVersion === 'number' ? `v${armVersion}` : undefined;
  }
  return normalizePlatform({
    os: process.platform === 'win32' ? 'windows' : process.platform,
    architecture,
    variant,
  });
}

/**
 * How well `candidate` serves `wanted`: 2 for the same normalised platform, 1 when `wanted` leaves the
 * variant open (an architecture without a default variant, e.g. `amd64` also takes `amd64/v3`), 0 for no.
 */
export function platformMatchScore(wanted: Platform, candidate: Platform): 0 | 1 | 2 {
  const want = normalizePlatform(wanted);
  const have = normalizePlatform(candidate);
  if (want.os !== have.os || want.architecture !== have.architecture) return 0;
  if (want.variant === have.variant) return 2;
  if (want.variant === undefined) return 1;
  return 0;
}

export function platformMatches(wanted: Platform, candidate: Platform): boolean {
  return platformMatchScore(wanted, candidate) > 0;
}

/**
 * Picks the entry of an index that best serves `wanted` (first of the best). Nothing matching is a
 * 'not-found' error that lists what the index offers.
 */
export function selectPlatform<T extends { readonly platform?: Platform | undefined }>(
  entries: readonly T[],
  wanted: Platform,
  what: string,
): T {
  let best: T | undefined;
  let bestScore = 0;
  for (const entry of entries) {
    if (!entry.platform) continue;
    const score = platformMatchScore(wanted, entry.platform);
    if (score > bestScore) {
      best = entry;
      bestScore = score;
    }
  }
  if (best !== undefined) return best;
  const offered = [
    ...new Set(
      entries
        .flatMap((entry) => (entry.platform ? [entry.platform] : []))
        // Attestation manifests (buildx) are not images anybody can select.
        .filter((platform) => platform.os !== 'unknown' && platform.architecture !== 'unknown')
        .map(formatPlatform),
    ),
  ];
  throw new ErofsOciError(
    'not-found',
    `Cannot find platform ${formatPlatform(wanted)} in ${what}: it offers ${offered.length > 0 ? offered.join(', ') : 'no platforms'}`,
    { hint: offered.length > 0 ? `choose one with --platform ${offered[0]}` : undefined },
  );
}
