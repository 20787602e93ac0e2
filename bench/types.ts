/** One benchmark figure. */
export type BenchResult = { name: string; value: number; unit: string; note?: string };

/** A benchmark module: `run` measures and returns its figures. */
export interface BenchModule {
  run(options: { quick: boolean }): Promise<BenchResult[]>;
}
