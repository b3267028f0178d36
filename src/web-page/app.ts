/**
 * The relay's web page (`offset-relay serve --ws-port PORT --web`, at `/`):
 * a person pastes a peer's key and exchanges text with it, the peer being a
 * listener exposed with `offset-relay listen` or another tab of this page.
 * Bundled by scripts/build.ts into dist/browser/page.js; the HTML around it
 * is src/adapters/web-page.ts.
 *
 * The page listens as soon as it loads (so other tabs can reach it by its
 * key, which it shows) and connects when asked. Each tab has its own key,
 * kept in IndexedDB under a name held in the tab's sessionStorage: a reload
 * keeps the key, a second tab gets another. Every state and error is shown
 * in words in #state and #error; tests read them (data-state holds the
 * state's short name).
 */
import {
  connect,
  listen,
  type ListenerEvent,
  loadOrCreateIdentity,
  type PeerConnection,
  type RelayStatus
} from "../browser.ts"

const element = <T extends HTMLElement>(id: string): T => {
  const found = document.getElementById(id)
  if (found === null) throw new Error(`the page has no #${id}`)
  return found as T
}

const ownKey = element<HTMLElement>("own-key")
const relayText = element<HTMLElement>("relay")
const stateText = element<HTMLElement>("state")
const errorText = element<HTMLElement>("error")
const peerKeyInput = element<HTMLInputElement>("peer-key")
const connectButton = element<HTMLButtonElement>("connect")
const disconnectButton = element<HTMLButtonElement>("disconnect")
const log = element<HTMLElement>("log")
const messageForm = element<HTMLFormElement>("message-form")
const messageInput = element<HTMLInputElement>("message")
const connectForm = element<HTMLFormElement>("connect-form")

const setState = (name: string, words: string) => {
  stateText.dataset.state = name
  stateText.textContent = words
}

const showError = (words: string) => {
  errorText.textContent = words
  errorText.hidden = words === ""
}

const addLine = (who: "me" | "peer" | "note", text: string) => {
  const line = document.createElement("li")
  line.className = who
  line.textContent = who === "note" ? text : `${who === "me" ? "you" : "peer"}: ${text}`
  log.append(line)
  log.scrollTop = log.scrollHeight
}

/** The relay this page was served by: its key from the page, the host and port from the address bar. */
const relayAddress = (): string => {
  const key = document.querySelector<HTMLMetaElement>("meta[name=offset-relay-key]")?.content ?? ""
  const secure = location.protocol === "https:"
  const port = location.port === "" ? (secure ? "443" : "80") : location.port
  return `${key}@${secure ? "wss" : "ws"}://${location.hostname}:${port}`
}

/** This tab's identity name: made once per tab, kept across reloads. */
const tabIdentityName = (): string => {
  const saved = sessionStorage.getItem("offset-relay-identity")
  if (saved !== null) return saved
  const name = `tab-${Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("")}`
  sessionStorage.setItem("offset-relay-identity", name)
  return name
}

let conversation: PeerConnection | undefined

const describeListening = (status: RelayStatus): [string, string] => {
  switch (status.state) {
    case "listening":
      return ["listening", "Listening: peers can reach you by your key."]
    case "connecting":
      return ["connecting", "Connecting to the relay…"]
    case "backing-off":
      return [
        "relay-unreachable",
        `Cannot reach the relay (${status.lastError ?? "no reason given"}); trying again in ${Math.ceil((status.retryInMs ?? 0) / 1000)} s.`
      ]
  }
}

const onListenerEvent = (event: ListenerEvent) => {
  if (event._tag !== "StatusChanged" || conversation !== undefined) return
  const [name, words] = describeListening(event.status)
  setState(name, words)
  showError(name === "relay-unreachable" ? words : "")
}

const decoder = new TextDecoder()

/** Talks with `peer` until either side ends; one conversation at a time. */
const converse = async (peer: PeerConnection, how: string) => {
  conversation = peer
  setState("connected", `Connected to ${peer.remotePublicKey} (${how}).`)
  showError("")
  connectButton.disabled = true
  disconnectButton.disabled = false
  messageInput.disabled = false
  addLine("note", `connected to ${peer.remotePublicKey}`)
  try {
    for (;;) {
      const bytes = await peer.receive()
      if (bytes === undefined) break
      for (const line of decoder.decode(bytes).split("\n")) if (line !== "") addLine("peer", line)
    }
    addLine("note", "the peer ended the conversation")
    await peer.end().catch(() => {})
  } catch (error) {
    showError(`The conversation failed: ${error instanceof Error ? error.message : String(error)}`)
  } finally {
    conversation = undefined
    connectButton.disabled = false
    disconnectButton.disabled = true
    messageInput.disabled = true
    setState("disconnected", "Not connected. Listening goes on: paste a key to connect again.")
  }
}

const main = async () => {
  const relay = relayAddress()
  relayText.textContent = relay
  setState("starting", "Loading your key…")
  const identity = await loadOrCreateIdentity(tabIdentityName())
  const listener = listen({ identity, relays: [relay], allow: () => true, onEvent: onListenerEvent })
  ownKey.textContent = listener.publicKey
  for (const status of listener.status()) onListenerEvent({ _tag: "StatusChanged", status })

  // Incoming peers: one conversation at a time; others are told the page is busy.
  void (async () => {
    for (;;) {
      const peer = await listener.accept()
      if (conversation !== undefined) {
        void peer.close()
        continue
      }
      void converse(peer, "they connected to you")
    }
  })()

  connectForm.addEventListener("submit", (event) => {
    event.preventDefault()
    const key = peerKeyInput.value.trim()
    if (!/^[0-9a-fA-F]{64}$/.test(key)) {
      showError(`A peer's key is 64 hex digits; "${key.slice(0, 80)}" is not one.`)
      return
    }
    setState("connecting-peer", `Connecting to ${key}…`)
    showError("")
    connectButton.disabled = true
    connect({ identity, relays: [relay], to: key }).then(
      (peer) => converse(peer, "you connected"),
      (error: unknown) => {
        connectButton.disabled = false
        setState("connect-failed", "Could not connect.")
        showError(`Could not connect to ${key}: ${error instanceof Error ? error.message : String(error)}`)
      }
    )
  })

  disconnectButton.addEventListener("click", () => {
    void conversation?.end()
  })

  messageForm.addEventListener("submit", (event) => {
    event.preventDefault()
    const text = messageInput.value
    const peer = conversation
    if (peer === undefined || text === "") return
    messageInput.value = ""
    addLine("me", text)
    peer.send(`${text}\n`).catch((error: unknown) => showError(`Not sent: ${error instanceof Error ? error.message : String(error)}`))
  })
}

main().catch((error: unknown) => {
  setState("failed", "The page could not start.")
  showError(error instanceof Error ? error.message : String(error))
})
