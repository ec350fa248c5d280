// digitlab's drawing page: draw on a canvas, send it as 28x28 pixels to POST /api/predict, show the answer;
// then (debounced) POST /api/explain with the same pixels: a heat map over the 28x28 and each layer's output.
// The page only scales the drawing down (10x10 block averages); all preprocessing happens on the server,
// in the same functions the CLI and the Python API use.
"use strict";

const SIDE = 28;            // the API takes 28x28 pixels, bright ink on black
const STROKE = 20;          // pen width in canvas pixels (the canvas is 280x280, so 2 px at 28x28, like MNIST)
const THROTTLE_MS = 150;    // at most one prediction request per this interval while drawing
const EXPLAIN_DEBOUNCE_MS = 250;  // an explanation once the drawing has rested this long (they cost more)

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const preview = document.getElementById("preview");
const previewCtx = preview.getContext("2d");
const predictionEl = document.getElementById("prediction");
const confidenceEl = document.getElementById("confidence");
const barsEl = document.getElementById("bars");
const errorEl = document.getElementById("error");
const hintEl = document.getElementById("hint");

let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
// What the page asks the user to draw, worded from /api/model: digits for MNIST, else what the model reads,
// named with its classes (a Fashion-MNIST model reads clothes, not digits).
const SUBJECTS = { "fashion-mnist": { what: "an item of clothing", one: "one item", noun: "item" } };
const DIGITS = { what: "a digit", one: "one digit", noun: "digit" };
let subject = DIGITS;
let drawing = false;
let hasInk = false;
let last = null;            // last pointer position while drawing, in canvas pixels
let lastSent = 0;
let inFlight = false;
let queued = false;
let generation = 0;         // bumped by Clear, so answers about an old drawing are dropped
let strokesEnded = 0;       // finished strokes since the page loaded
const heat = document.getElementById("heat");
const heatCtx = heat.getContext("2d");
const whyLabelEl = document.getElementById("why-label");
const whyNoteEl = document.getElementById("why-note");
const layersEl = document.getElementById("layers");
const methodEl = document.getElementById("method");
let explainTimer = null;
let explainInFlight = false;
let explainNext = null;     // the newest {pixels, generation, strokes, final} waiting for an explanation
let lastExplained = null;   // what was last sent, so a change of method can explain it again

// ---- drawing

function clearCanvas() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

function position(event) {
  const rect = canvas.getBoundingClientRect();
  return {
    x: (event.clientX - rect.left) * (canvas.width / rect.width),
    y: (event.clientY - rect.top) * (canvas.height / rect.height),
  };
}

function strokeTo(p) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = STROKE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  if (!last) {  // a dot where the stroke starts, so a tap leaves a mark
    ctx.beginPath();
    ctx.arc(p.x, p.y, STROKE / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
  }
  last = p;
  hasInk = true;
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  drawing = true;
  last = null;
  strokeTo(position(event));
  hintEl.textContent = "Clear to start again";
});

canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (events.length ? events : [event])) strokeTo(position(e));
  if (performance.now() - lastSent >= THROTTLE_MS) requestPrediction();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  last = null;
  strokesEnded++;
  requestPrediction();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

// ---- talking to the API

function canvasPixels() {
  // Average each (scale x scale) block of the red channel: the canvas at 28x28, as plain numbers 0..255.
  const scale = canvas.width / SIDE;
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const rows = [];
  for (let r = 0; r < SIDE; r++) {
    const row = [];
    for (let c = 0; c < SIDE; c++) {
      let sum = 0;
      for (let y = r * scale; y < (r + 1) * scale; y++) {
        for (let x = c * scale; x < (c + 1) * scale; x++) sum += data[(y * canvas.width + x) * 4];
      }
      row.push(Math.round(sum / (scale * scale)));
    }
    rows.push(row);
  }
  return rows;
}

async function requestPrediction() {
  if (!hasInk) return;
  if (inFlight) { queued = true; return; }
  inFlight = true;
  queued = false;
  lastSent = performance.now();
  const sentFor = generation;
  const strokes = strokesEnded;
  const final = !drawing;   // sent after the pen was lifted: nothing newer is drawn yet
  const pixels = canvasPixels();
  try {
    const response = await fetch("/api/predict?preprocessed=true", {  // the preview draws what the model saw
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels }),
    });
    const answer = await response.json();
    if (sentFor !== generation) return;
    if (response.ok) {
      showPrediction(answer);
      scheduleExplain({ pixels, generation: sentFor, strokes, final });
    }
    else showError(response.status === 422 ? `No ${subject.noun} yet: keep drawing` : answer.detail);
  } catch (err) {
    if (sentFor === generation) showError("The server did not answer (" + err.message + ")");
  } finally {
    inFlight = false;
    if (queued) requestPrediction();
    // body[data-settled] = how many finished strokes the shown answer covers (tests and tools wait on it)
    else if (final && !drawing && strokes === strokesEnded) document.body.dataset.settled = String(strokes);
  }
}

// ---- showing the answer

function buildBars() {
  barsEl.replaceChildren();
  classes.forEach((name, i) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.class = String(i);
    bar.innerHTML = '<span class="name"></span><div class="track"><div class="fill"></div></div>' +
      '<span class="pct">0%</span>';
    bar.querySelector(".name").textContent = name;
    bar.title = name;
    barsEl.appendChild(bar);
  });
}

function showPrediction(answer) {
  errorEl.textContent = "";
  if (answer.label === null) showRefusal(answer);
  else {
    predictionEl.classList.remove("refused");
    delete predictionEl.dataset.reason;
    predictionEl.textContent = classes.every((c) => c.length === 1) ? String(answer.label) : answer.class_name;
    predictionEl.dataset.label = String(answer.label);
    confidenceEl.textContent = percent(answer.probability) + confidenceWords(answer.model);
  }
  answer.probabilities.forEach((p, i) => {
    const bar = barsEl.querySelector(`[data-class="${i}"]`);
    if (!bar) return;
    bar.classList.toggle("top", i === answer.label);
    bar.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    bar.querySelector(".pct").textContent = percent(p);
  });
  drawPreview(answer.preprocessed);
}

// The model refused to name a digit (label null): say why; the bars still show its probabilities.
const REFUSALS = {
  "not a digit": ["Not a digit", "This does not look like a digit"],
  "too small: draw it larger": ["Too small", "Draw it larger: the drawing is too small to read"],
};

function showRefusal(answer) {
  const [title, words] = REFUSALS[answer.reason] || ["No digit", answer.reason || ""];
  predictionEl.classList.add("refused");
  predictionEl.textContent = title;
  predictionEl.dataset.reason = answer.reason || "";
  delete predictionEl.dataset.label;
  confidenceEl.title = "";
  confidenceEl.textContent = words;
}

function confidenceWords(model) {  // a calibrated probability is how sure; a raw softmax is only a score
  const calibration = (model && model.calibration) || {};
  confidenceEl.title = calibration.note || "";
  return calibration.calibrated ? " sure" : " (uncalibrated score)";
}

function percent(p) {  // "0%", "0.4%", "87.5%", "100%": a decimal only where it tells something
  return (100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1) + "%";
}

function drawPreview(pixels) {
  const image = previewCtx.createImageData(SIDE, SIDE);
  pixels.forEach((row, r) => row.forEach((v, c) => {
    const k = (r * SIDE + c) * 4;
    image.data[k] = image.data[k + 1] = image.data[k + 2] = v;
    image.data[k + 3] = 255;
  }));
  previewCtx.putImageData(image, 0, 0);
}

// ---- why: the explanation of the same pixels

function scheduleExplain(request) {
  clearTimeout(explainTimer);
  explainTimer = setTimeout(() => requestExplain(request), request.final ? 0 : EXPLAIN_DEBOUNCE_MS);
}

async function requestExplain(request) {
  if (explainInFlight) { explainNext = request; return; }
  explainInFlight = true;
  lastExplained = request;
  try {
    const response = await fetch(`/api/explain?method=${encodeURIComponent(methodEl.value)}&layers=true`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels: request.pixels }),
    });
    const answer = await response.json();
    if (request.generation !== generation) return;
    if (response.ok) showWhy(answer);
    else whyNoteEl.textContent = answer.detail || "No explanation";
  } catch (err) {
    if (request.generation === generation) whyNoteEl.textContent = "No explanation (" + err.message + ")";
  } finally {
    explainInFlight = false;
    const next = explainNext;
    explainNext = null;
    if (next) requestExplain(next);
    // body[data-explained] = how many finished strokes the shown explanation covers (tests wait on it)
    else if (request.final && request.strokes === strokesEnded && request.generation === generation) {
      document.body.dataset.explained = String(request.strokes);
    }
  }
}

function showWhy(answer) {
  const map = answer.maps[0];
  whyLabelEl.textContent = map.class_name;
  whyLabelEl.dataset.label = String(map.class);
  const other = answer.maps[1];
  whyNoteEl.textContent = `${answer.method_name}: red pixels speak for ${map.class_name}, blue against it` +
    (other ? ` (runner-up: ${other.class_name}, ${percent(other.probability)})` : "");
  drawHeat(answer.preprocessed, map.attribution);
  drawLayers(answer.layers || []);
}

function drawHeat(seen, attribution) {
  // The 28x28 the model saw, dimmed, under the map: opacity grows with |value|, red for, blue against.
  let peak = 0;
  attribution.forEach((row) => row.forEach((v) => { peak = Math.max(peak, Math.abs(v)); }));
  const image = heatCtx.createImageData(SIDE, SIDE);
  for (let r = 0; r < SIDE; r++) {
    for (let c = 0; c < SIDE; c++) {
      const v = attribution[r][c];
      const alpha = peak > 0 ? Math.pow(Math.min(1, Math.abs(v) / peak), 0.6) : 0;
      const color = v >= 0 ? [255, 38, 25] : [25, 115, 255];
      const base = seen[r][c] / 2.5;
      const k = (r * SIDE + c) * 4;
      for (let i = 0; i < 3; i++) image.data[k + i] = Math.round(base * (1 - alpha) + color[i] * alpha);
      image.data[k + 3] = 255;
    }
  }
  heatCtx.putImageData(image, 0, 0);
}

function drawLayers(layers) {
  layersEl.replaceChildren();
  layers.forEach((layer) => {
    const row = document.createElement("div");
    row.className = "layer";
    const name = document.createElement("span");
    name.className = "layer-name";
    name.textContent = `${layer.name} ${layer.type} (${layer.shape.join("×")})`;
    name.title = name.textContent;
    const maps = document.createElement("div");
    maps.className = "layer-maps";
    layer.maps.forEach((channel) => maps.appendChild(channelCanvas(channel)));
    row.append(name, maps);
    layersEl.appendChild(row);
  });
}

function channelCanvas(channel) {
  const h = channel.length;
  const w = channel[0].length;
  const el = document.createElement("canvas");
  el.width = w;
  el.height = h;
  el.style.width = Math.max(6, Math.round(28 * w / h)) + "px";  // 28 px high, the shape kept
  const image = el.getContext("2d").createImageData(w, h);
  channel.forEach((row, r) => row.forEach((v, c) => {
    const k = (r * w + c) * 4;
    image.data[k] = Math.round(v * 0.55);  // dark blue to yellow, like the CLI's figures
    image.data[k + 1] = v;
    image.data[k + 2] = Math.round(120 + v * 0.2 - (v * v) / 700);
    image.data[k + 3] = 255;
  }));
  el.getContext("2d").putImageData(image, 0, 0);
  return el;
}

function clearWhy() {
  clearTimeout(explainTimer);
  explainNext = null;
  lastExplained = null;
  heatCtx.fillStyle = "#000";
  heatCtx.fillRect(0, 0, SIDE, SIDE);
  whyLabelEl.textContent = "–";
  delete whyLabelEl.dataset.label;
  whyNoteEl.textContent = `Draw ${subject.what}: red pixels speak for the prediction, blue against it.`;
  layersEl.replaceChildren();
}

methodEl.addEventListener("change", () => {
  if (lastExplained && lastExplained.generation === generation) requestExplain({ ...lastExplained });
});

function showError(message) {
  errorEl.textContent = message || "Something went wrong";
}

function reset() {
  generation++;
  hasInk = false;
  queued = false;
  clearCanvas();
  previewCtx.fillStyle = "#000";
  previewCtx.fillRect(0, 0, SIDE, SIDE);
  predictionEl.textContent = "–";
  predictionEl.classList.remove("refused");
  delete predictionEl.dataset.label;
  delete predictionEl.dataset.reason;
  confidenceEl.innerHTML = "&nbsp;";
  errorEl.textContent = "";
  hintEl.textContent = `Draw ${subject.one}, large and centred`;
  clearWhy();
  barsEl.querySelectorAll(".bar").forEach((bar) => {
    bar.classList.remove("top");
    bar.querySelector(".fill").style.width = "0";
    bar.querySelector(".pct").textContent = "0%";
  });
}

document.getElementById("clear").addEventListener("click", reset);

async function loadModel() {
  const el = document.getElementById("model");
  try {
    const model = await (await fetch("/api/model")).json();
    if (Array.isArray(model.classes) && model.classes.length) {
      classes = model.classes.map(String);
      buildBars();
    }
    wordPrompts(model.dataset);
    const accuracy = typeof model.test_accuracy === "number"
      ? ` · ${(100 * model.test_accuracy).toFixed(2)}% test accuracy` : "";
    const calibration = model.calibration || {};
    const probabilities = calibration.calibrated
      ? ` · calibrated probabilities (T = ${Number(calibration.temperature).toPrecision(3)})`
      : " · uncalibrated probabilities";
    el.textContent = `model: ${model.name} on ${model.dataset}${accuracy}${probabilities}`;
    el.title = calibration.note || "";
  } catch (err) {
    el.textContent = "model: unknown";
  }
}

// The prompts for the loaded model's dataset: "Draw a digit" for MNIST (or any model whose classes are the ten
// digits); otherwise what it reads and its classes, e.g. "Draw an item of clothing: T-shirt/top, Trouser, ...".
function wordPrompts(dataset) {
  const digits = dataset === "mnist" || classes.every((name) => /^[0-9]$/.test(name));
  subject = digits ? DIGITS
    : SUBJECTS[dataset] || { what: "one of the things it knows", one: "one thing", noun: "drawing" };
  document.getElementById("prompt").textContent = digits
    ? "Draw a digit with your mouse or finger. The model guesses as you draw."
    : `Draw ${subject.what}: ${classes.join(", ")}. Use your mouse or finger; the model guesses as you draw.`;
  document.title = `digitlab · draw ${subject.what}`;
  canvas.setAttribute("aria-label", `drawing canvas: draw ${subject.one}`);
  if (!hasInk) {
    hintEl.textContent = `Draw ${subject.one}, large and centred`;
    whyNoteEl.textContent = `Draw ${subject.what}: red pixels speak for the prediction, blue against it.`;
  }
}

buildBars();
reset();
loadModel();
