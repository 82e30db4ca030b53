/** The erofs-image-spec chunk index (§3.4) and the `+zstd` framing of chunked layers (§3.3). */
export * from './codec.ts';
export * from './embedded.ts';
export * from './encoder.ts';
export * from './format.ts';
export * from './standalone.ts';
