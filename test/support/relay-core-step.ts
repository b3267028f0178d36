import type { RelayCommand, RelayCore, RelayEvent } from "../../src/core/relay-core.ts"

/** Feeds one event and drains the core: the commands that event caused, in order. */
export const handleAll = (core: RelayCore, event: RelayEvent): Array<RelayCommand> => {
  core.handle(event)
  const commands: Array<RelayCommand> = []
  for (let command = core.poll(); command !== undefined; command = core.poll()) commands.push(command)
  return commands
}
