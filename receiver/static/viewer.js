// facecodec viewer: receives the rebuilt call as a WebRTC video track from the local receiver
// (POST /offer), polls its stats (GET /stats) and sends free-view changes (POST /view).
//
// ICE note: there are no ICE servers (the receiver is on this machine and may be offline).
// Chromium hides this page's host addresses behind mDNS names (<uuid>.local), which the
// receiver may not resolve; it connects anyway, because the receiver's answer carries real
// addresses and it learns ours from our connectivity checks. No browser flag is needed.
"use strict";

const STATS_PERIOD_MS = 1000;
const ICE_GATHER_TIMEOUT_MS = 5000;

const video = document.getElementById("video");
const statusLine = document.getElementById("status");
const reconnectButton = document.getElementById("reconnect");
const statsBody = document.querySelector("#stats tbody");
const viewForm = document.getElementById("view");

let pc = null;

function setStatus(text, kind = "") {
  statusLine.textContent = text;
  statusLine.className = kind;
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const reply = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(reply.error || `${path}: HTTP ${response.status}`);
  return reply;
}

// Resolves when ICE gathering is complete, or after a timeout with whatever was gathered:
// the receiver does not take trickled candidates, so they must all be in the offer.
function iceGatheringComplete(peer, timeoutMs) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (peer.iceGatheringState !== "complete") return;
      peer.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function connect() {
  reconnectButton.hidden = true;
  if (pc) pc.close();
  setStatus("Connecting…");
  const peer = new RTCPeerConnection({ iceServers: [] });
  pc = peer;
  peer.addTransceiver("video", { direction: "recvonly" });
  peer.addEventListener("track", (event) => {
    video.srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  peer.addEventListener("connectionstatechange", () => {
    if (peer !== pc) return;  // an older connection being torn down
    const state = peer.connectionState;
    if (state === "connected") {
      setStatus("Connected", "ok");
    } else if (state === "failed" || state === "disconnected" || state === "closed") {
      setStatus(`Connection ${state}`, "bad");
      reconnectButton.hidden = false;
    } else {
      setStatus(`Connection ${state}…`);
    }
  });

  try {
    await peer.setLocalDescription(await peer.createOffer());
    await iceGatheringComplete(peer, ICE_GATHER_TIMEOUT_MS);
    const offer = peer.localDescription;
    const answer = await postJson("/offer", { sdp: offer.sdp, type: offer.type });
    await peer.setRemoteDescription(answer);
  } catch (error) {
    if (peer !== pc) return;
    setStatus(`Could not connect: ${error.message}`, "bad");
    reconnectButton.hidden = false;
  }
}

// -- stats ---------------------------------------------------------------------------------

function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const digits = Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
    return value.toFixed(digits);
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function renderStats(stats) {
  const rows = Object.entries(stats).map(([key, value]) => {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = key.replaceAll("_", " ");
    const cell = document.createElement("td");
    cell.dataset.key = key;
    cell.textContent = formatValue(value);
    row.append(name, cell);
    return row;
  });
  statsBody.replaceChildren(...rows);
}

async function pollStats() {
  try {
    const response = await fetch("/stats", { cache: "no-store" });
    const stats = await response.json();
    if (!response.ok) throw new Error(stats.error || `HTTP ${response.status}`);
    renderStats(stats);
  } catch (error) {
    const row = document.createElement("tr");
    row.innerHTML = '<td colspan="2" class="muted"></td>';
    row.firstChild.textContent = `stats unavailable: ${error.message}`;
    statsBody.replaceChildren(row);
  } finally {
    setTimeout(pollStats, STATS_PERIOD_MS);
  }
}

// -- free view -----------------------------------------------------------------------------

function currentView() {
  return {
    yaw: Number(viewForm.yaw.value),
    pitch: Number(viewForm.pitch.value),
    roll: Number(viewForm.roll.value),
    frontalize: viewForm.frontalize.checked,
  };
}

// Dragging a slider fires many input events; keep one request in flight and send only the
// newest view after it, so the receiver never works through a backlog of stale views.
let pendingView = null;
let viewInFlight = false;

async function sendView() {
  pendingView = currentView();
  if (viewInFlight) return;
  viewInFlight = true;
  try {
    while (pendingView) {
      const view = pendingView;
      pendingView = null;
      try {
        await postJson("/view", view);
      } catch (error) {
        setStatus(`View not applied: ${error.message}`, "bad");
      }
    }
  } finally {
    viewInFlight = false;
  }
}

function showAngles() {
  for (const name of ["yaw", "pitch", "roll"]) {
    document.getElementById(`${name}-value`).textContent = `${viewForm[name].value}°`;
  }
}

viewForm.addEventListener("input", () => {
  showAngles();
  sendView();
});
viewForm.addEventListener("reset", () => {
  // The form's values change only after the reset event has been handled.
  setTimeout(() => {
    showAngles();
    sendView();
  }, 0);
});
viewForm.addEventListener("submit", (event) => event.preventDefault());
reconnectButton.addEventListener("click", connect);

connect();
pollStats();
