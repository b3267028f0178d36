/** A machine fed with `handle` and drained with `poll` (RelayCore, ListenFlow, ConnectGate, StreamState). */
export interface HandlePoll<E, C> {
  handle(event: E): void
  poll(): C | undefined
}

/** Feeds one event and drains the machine: the commands that event caused, in order. */
export const handleAll = <E, C>(machine: HandlePoll<E, C>, event: E): Array<C> => {
  machine.handle(event)
  const out: Array<C> = []
  for (let command = machine.poll(); command !== undefined; command = machine.poll()) out.push(command)
  return out
}
