/**
 * Image references (SPEC §1 "Sources"): registry references in the grammar of
 * https://github.com/distribution/reference/blob/main/reference.go, with Docker's defaults (no host →
 * `docker.io`, single-component names under `library/`, no tag → `latest`), and the local layout forms
 * `oci:`, `oci-archive:` and `docker-archive:`.
 */
import { ErofsOciError } from '../errors.ts';
import { parseDigest } from './digest.ts';

export const DOCKER_HUB = 'docker.io';
/** The host serving the registry API of Docker Hub. */
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';

export interface RegistryReference {
  readonly kind: 'registry';
  /** `docker.io` or `HOST[:PORT]` as written (lowercased host). */
  readonly registry: string;
  /** Repository path inside the registry, with `library/` added for Docker Hub's official images. */
  readonly repository: string;
  /** Tag, `latest` when neither a tag nor a digest is given. Informational when `digest` is set. */
  readonly tag: string | undefined;
  /** `sha256:…` pinning the manifest; verified when fetched. */
  readonly digest: string | undefined;
}

export type SourceReference =
  | RegistryReference
  | {
      readonly kind: 'oci';
      readonly path: string;
      readonly tag: string | undefined;
      readonly digest: string | undefined;
    }
  | { readonly kind: 'oci-archive'; readonly path: string; readonly tag: string | undefined }
  | { readonly kind: 'docker-archive'; readonly path: string; readonly reference: string | undefined };

const HOST_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST = new RegExp(
  `^(?:${HOST_COMPONENT}(?:\\.${HOST_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]{1,5})?$`,
);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const MAX_NAME_LENGTH = 255;

function invalid(reference: string, why: string): ErofsOciError {
  return new ErofsOciError('usage', `Invalid image reference ${JSON.stringify(reference)}: ${why}`);
}

/** Parses `[docker://]HOST[:PORT]/REPO[:TAG][@DIGEST]`. */
export function parseRegistryReference(input: string): RegistryReference {
  const text = input.startsWith('docker://') ? input.slice('docker://'.length) : input;
  if (text === '') throw invalid(input, 'it is empty');

  let rest = text;
  let digest: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    try {
      parseDigest(digest, 'digest');
    } catch (error) {
      throw invalid(input, error instanceof Error ? error.message : String(error));
    }
  }

  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(input, `tag ${JSON.stringify(tag)} is not valid`);
  }

  const components = rest.split('/');
  let registry = DOCKER_HUB;
  const first = components[0] ?? '';
  // A first component with `.` or `:` or equal to `localhost` names a host (SPEC §1).
  if (components.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    if (!HOST.test(first)) throw invalid(input, `registry host ${JSON.stringify(first)} is not valid`);
    registry = first.toLowerCase();
    components.shift();
  }
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_API_HOST) registry = DOCKER_HUB;

  if (components.length === 0 || components.some((component) => component === '')) {
    throw invalid(input, 'the repository name is missing or has an empty component');
  }
  for (const component of components) {
    if (!PATH_COMPONENT.test(component)) {
      const why =
        component !== component.toLowerCase() ? 'repository names must be lowercase' : 'it is not valid';
      throw invalid(input, `repository component ${JSON.stringify(component)}: ${why}`);
    }
  }
  if (registry === DOCKER_HUB && components.length === 1) components.unshift('library');
  const repository = components.join('/');
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) {
    throw invalid(input, `the name is longer than ${MAX_NAME_LENGTH} characters`);
  }
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { kind: 'registry', registry, repository, tag, digest };
}

/** The host and port that serve the registry API for `registry`. */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry;
}

/** The canonical text of a registry reference: `docker.io/library/alpine:3.20@sha256:…`. */
export function formatRegistryReference(reference: RegistryReference): string {
  let text = `${reference.registry}/${reference.repository}`;
  if (reference.tag !== undefined) text += `:${reference.tag}`;
  if (reference.digest !== undefined) text += `@${reference.digest}`;
  return text;
}

/** Splits `PATH[:REF]` at the first colon, as containers/image does for its layout transports. */
function splitPathAndReference(body: string): { path: string; reference: string | undefined } {
  const colon = body.indexOf(':');
  if (colon < 0) return { path: body, reference: undefined };
  return { path: body.slice(0, colon), reference: body.slice(colon + 1) || undefined };
}

/**
 * Parses any image source of SPEC §1 that names an image (`tar:` and `dir:` are file-tree sources handled
 * by the build, not images, and are rejected here with a usage error).
 */
export function parseSourceReference(input: string): SourceReference {
  if (input.startsWith('oci:')) {
    const body = input.slice('oci:'.length);
    const at = body.lastIndexOf('@');
    if (at >= 0 && body.slice(at + 1).includes(':')) {
      const digest = body.slice(at + 1);
      parseDigest(digest, `digest in ${JSON.stringify(input)}`);
      const path = body.slice(0, at);
      if (path === '') throw invalid(input, 'the layout directory is missing');
      return { kind: 'oci', path, tag: undefined, digest };
    }
    const { path, reference } = splitPathAndReference(body);
    if (path === '') throw invalid(input, 'the layout directory is missing');
    return { kind: 'oci', path, tag: reference, digest: undefined };
  }
  if (input.startsWith('oci-archive:')) {
    const { path, reference } = splitPathAndReference(input.slice('oci-archive:'.length));
    if (path === '') throw invalid(input, 'the archive file is missing');
    return { kind: 'oci-archive', path, tag: reference };
  }
  if (input.startsWith('docker-archive:')) {
    const { path, reference } = splitPathAndReference(input.slice('docker-archive:'.length));
    if (path === '') throw invalid(input, 'the archive file is missing');
    return { kind: 'docker-archive', path, reference };
  }
  for (const prefix of ['tar:', 'dir:']) {
    if (input.startsWith(prefix)) {
      throw new ErofsOciError(
        'usage',
        `Cannot open ${JSON.stringify(input)} as an image: ${prefix} sources are file trees`,
      );
    }
  }
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//.exec(input);
  if (scheme && scheme[1] !== 'docker') {
    throw new ErofsOciError(
      'usage',
      `Cannot open ${JSON.stringify(input)}: transport ${scheme[1]}:// is not supported`,
    );
  }
  return parseRegistryReference(input);
}
