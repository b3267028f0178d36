/** Where `serve` keeps its identity by default, and where `keygen` writes one: shared without loading the relay. */
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

/** The default data directory: $XDG_DATA_HOME/offset-relay, else ~/.local/share/offset-relay. */
export const defaultDataDir = (): string =>
  NodePath.join(process.env.XDG_DATA_HOME ?? NodePath.join(NodeOs.homedir(), ".local", "share"), "offset-relay")
