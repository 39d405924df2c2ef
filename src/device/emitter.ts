/**
 * A small typed event emitter that runs in Node and in the browser alike (node:events does not
 * exist in a page). The subset of EventEmitter the device clients use: on, once, off, emit,
 * removeAllListeners, listenerCount. There is no listener limit (and no warning). Listeners run in the order they were added; one that throws stops the others,
 * as with EventEmitter.
 */
type Listener<A extends unknown[]> = (...args: A) => void;

export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  readonly #listeners = new Map<keyof Events, Listener<never>[]>();

  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): this {
    const list = this.#listeners.get(event) ?? [];
    list.push(listener as Listener<never>);
    this.#listeners.set(event, list);
    return this;
  }

  once<K extends keyof Events>(event: K, listener: Listener<Events[K]>): this {
    const wrapper: Listener<Events[K]> = (...args) => {
      this.off(event, wrapper);
      listener(...args);
    };
    (wrapper as { original?: unknown }).original = listener;
    return this.on(event, wrapper);
  }

  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): this {
    const list = this.#listeners.get(event);
    if (list === undefined) return this;
    const i = list.findIndex((l) => l === listener || (l as { original?: unknown }).original === listener);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#listeners.delete(event);
    return this;
  }

  /** Calls every listener of the event; true when there was one. */
  emit<K extends keyof Events>(event: K, ...args: Events[K]): boolean {
    const list = this.#listeners.get(event);
    if (list === undefined) return false;
    // A copy: a listener may remove itself (once) while the others still run.
    for (const l of [...list]) (l as Listener<Events[K]>)(...args);
    return true;
  }

  /** Removes every listener of the event, or of every event. */
  removeAllListeners(event?: keyof Events): this {
    if (event === undefined) this.#listeners.clear();
    else this.#listeners.delete(event);
    return this;
  }

  listenerCount<K extends keyof Events>(event: K): number {
    return this.#listeners.get(event)?.length ?? 0;
  }
}
