/** A repeating task for the broker's pollers: never keeps the process alive, and starts once however often asked. */
export class Every {
  #timer: NodeJS.Timeout | null = null;

  constructor(
    readonly ms: number,
    readonly run: () => void,
  ) {}

  start(): void {
    this.#timer ??= setInterval(this.run, this.ms);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}
