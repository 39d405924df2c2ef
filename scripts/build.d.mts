// Types for scripts/build.mjs (plain JavaScript, so node runs it without a loader), for the tests.
export const ROOT: string;
export const DIST: string;
export const ENTRIES: readonly string[];
export function bundlePath(entry: string): string;
export function rewriteImportMeta(source: string, file: string, isEntry: boolean): string;
export function buildAll(): Promise<number>;
export function isStale(): boolean;
