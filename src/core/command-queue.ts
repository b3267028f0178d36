/**
 * The outbox of a machine with a drain API (quinn-proto's `poll_*` style):
 * the machine pushes the commands an event causes, the driver takes them one
 * by one with `poll` until it returns undefined. The array is reused, so a
 * busy machine allocates nothing per event once it has grown to its largest
 * batch.
 */
export class CommandQueue<C> {
  readonly #commands: Array<C | undefined> = []
  #head = 0

  push(command: C): void {
    this.#commands.push(command)
  }

  /** The next command, or undefined when there is none. */
  poll(): C | undefined {
    if (this.#head < this.#commands.length) {
      const command = this.#commands[this.#head]
      this.#commands[this.#head++] = undefined // let the command go; the slot is reused
      return command
    }
    this.#commands.length = 0
    this.#head = 0
    return undefined
  }
}
