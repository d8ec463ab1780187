// BraTS Studio's NiiVue viewer/editor: a Streamlit custom component (v1 message protocol, no React).
//
// Python sends (component arguments): volume URLs (one per modality, fetched over HTTP, not in the
// websocket message), the label map URL + a token that changes when the server changed the labels,
// the edit epoch (one per editing session) and the last edit revision Python has applied.
// The component sends back (component value): every edit not yet acknowledged, each with a revision
// number, so an edit is resent until Python has it and applied exactly once whatever the timing.
// Revisions are numbered per browser tab (``client``, kept in sessionStorage so a reload keeps it):
// two tabs editing one session never share a number, and Python acknowledges each tab's own.
// Labels are NiiVue's drawing layer (values 0..3 = background, NCR, ED, ET).
import { Niivue, NVImage, DRAG_MODE, MULTIPLANAR_TYPE, SHOW_RENDER, SLICE_TYPE } from '@niivue/niivue'
import { installBoxUploads } from './drawing_upload.js'
import { installRenderCache } from './render_cache.js'
import { installFramePacing } from './frame_pacing.js'

const LAYOUTS = {
  multi: SLICE_TYPE.MULTIPLANAR,
  axial: SLICE_TYPE.AXIAL,
  coronal: SLICE_TYPE.CORONAL,
  sagittal: SLICE_TYPE.SAGITTAL,
  '3d': SLICE_TYPE.RENDER,
}
const LAYOUT_LABELS = { multi: '4-up', axial: 'Axial', coronal: 'Coronal', sagittal: 'Sagittal', '3d': '3D' }
const TOOLS = { pen: 'Pen', erase: 'Eraser', fill: 'Fill' }
const NAMES = ['', 'NCR', 'ED', 'ET']

// ------------------------------------------------------------------ Streamlit protocol
function send(type, data = {}) {
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, '*')
}
const setFrameHeight = (height) => send('streamlit:setFrameHeight', { height })
const setValue = (value) => send('streamlit:setComponentValue', { value, dataType: 'json' })

// ------------------------------------------------------------------ state
const $ = (id) => document.getElementById(id)
const canvas = $('gl')
const state = {
  nv: null,
  args: null,
  volumes: new Map(), // url -> NVImage (each modality fetched once)
  volumePrefetch: new Map(), // url -> Promise<NVImage> being fetched
  activeUrl: '',
  textures: new Map(), // url -> {vol, grad}: GPU textures of the modalities not shown (see buildTextures)
  uncertainty: { on: false, url: '', image: null }, // the prediction's uncertainty overlay (Segment page), if shown
  modality: null, // name of the modality picked in the viewer bar (browser only, shared by every page); null: Python's
  labelsToken: null,
  epoch: '',
  rev: 0, // last revision issued in this epoch
  acked: 0, // last revision Python has applied
  pending: [], // edits not yet acknowledged, oldest first
  recent: [], // this tab's strokes that a labels file fetched now may not hold yet (see showLabels)
  labelsLoads: 0, // renders whose labels step has not finished (each may load a file older than the newest ack)
  tool: 'pen',
  label: 1,
  brush: 3,
  layout: 'multi',
  visible: null, // labels shown (1..3): set in the browser, shared by every page; null: Python's default
  opacity: null, // label layer opacity, as ``visible``
  snapshot: null, // drawing before the current mouse stroke (until the stroke is diffed, after mouse-up)
  strokeEnding: false, // mouse-up seen, the stroke's diff not taken yet
  uploads: null, // {boxes, full}: drawing uploads to the GPU, by pen box or whole layer (see drawing_upload.js)
  drawingChanged: null, // (idx) => the next drawing upload covers these voxels (see drawing_upload.js)
  localUndo: [], // this tab's strokes it can undo on screen at once: {rev, idx, val, before}, newest last
  localRedo: [], // those it undid, newest last
  localWrites: new Map(), // rev of an undo / redo shown at once -> {idx, val} it wrote (put back over a labels file)
  renderCache: null, // the 3D pane's last picture, shown while the user interacts (see render_cache.js)
  pacing: null, // redraws paced to the GPU (see frame_pacing.js)
  loading: Promise.resolve(),
  lastCaseKey: '',
  lastEventAt: 0,
  timings: {}, // ms since the iframe started, per loading stage (read by the benchmark)
  strokeTimes: new Map(), // rev -> {up, acked}: ms (performance.now) of mouse-up and of Python's acknowledgement
  shown: { lut: '', opacity: null, layout: '' }, // display settings already given to NiiVue (each costs a redraw)
}
const mark = (name) => { state.timings[name] = Math.round(performance.now()) }
// settles once the page's first slices and labels are painted (or loading failed): the 3D pane waits for it
let firstPainted = () => {}
const firstPaint = new Promise((resolve) => { firstPainted = resolve })

function storageKey(suffix) {
  return `brats-studio:${suffix}`
}

function tabClient() {
  // One id per browser tab: sessionStorage is per tab and survives its reloads.
  const make = () => Math.random().toString(36).slice(2, 12) + Date.now().toString(36)
  try {
    let id = sessionStorage.getItem(storageKey('client'))
    if (!id) { id = make(); sessionStorage.setItem(storageKey('client'), id) }
    return id
  } catch (e) { return make() }
}
const CLIENT = tabClient()

function saveView() {
  // One cursor and one set of view settings for every page (same origin, so shared by all iframes).
  const nv = state.nv
  if (!nv || !state.args) return
  try {
    localStorage.setItem(storageKey('view'), JSON.stringify({ layout: state.layout, brush: state.brush, tool: state.tool,
      label: state.label, visible: state.visible, opacity: state.opacity, modality: state.modality }))
    const mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3)
    localStorage.setItem(storageKey(`cursor:${state.args.case_key}`), JSON.stringify(mm))
  } catch (e) { /* private mode: settings stay per page */ }
}

function loadView() {
  try {
    const view = JSON.parse(localStorage.getItem(storageKey('view')) || '{}')
    if (view.layout in LAYOUTS) state.layout = view.layout
    if (view.brush >= 1 && view.brush <= 50) state.brush = view.brush
    if (view.tool in TOOLS) state.tool = view.tool
    if ([0, 1, 2, 3].includes(view.label)) state.label = view.label
    if (Array.isArray(view.visible) && view.visible.every((l) => [1, 2, 3].includes(l))) state.visible = view.visible
    if (typeof view.opacity === 'number' && view.opacity >= 0 && view.opacity <= 1) state.opacity = view.opacity
    if (typeof view.modality === 'string') state.modality = view.modality
  } catch (e) { /* ignore */ }
}

function savedCursor(caseKey) {
  try {
    const mm = JSON.parse(localStorage.getItem(storageKey(`cursor:${caseKey}`)) || 'null')
    return Array.isArray(mm) && mm.length === 3 ? mm : null
  } catch (e) { return null }
}

// ------------------------------------------------------------------ NiiVue set-up
function hasWebGL2() {
  try { return !!document.createElement('canvas').getContext('webgl2') } catch (e) { return false }
}

async function createViewer() {
  const nv = new Niivue({
    backColor: [0.055, 0.067, 0.09, 1],
    crosshairColor: [1, 0.8, 0, 1],
    isRadiologicalConvention: true, // patient right on screen left, as ITK-SNAP / BraTS viewers show it
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    multiplanarLayout: MULTIPLANAR_TYPE.GRID, // 4-up is 2 x 2 on every page (auto put 4 small panes in a row)
    isOrientationTextVisible: true,
    showAllOrientationMarkers: true,
    isNearestInterpolation: true,
    dragAndDropEnabled: false,
    dragMode: DRAG_MODE.contrast,
    mouseEventConfig: {
      leftButton: { primary: DRAG_MODE.crosshair, withCtrl: DRAG_MODE.pan },
      rightButton: DRAG_MODE.contrast, // right-drag: window / level
      centerButton: DRAG_MODE.pan, // middle-drag: pan
    },
    penSize: state.brush,
    maxDrawUndoBitmaps: 2, // history lives in Python (Ctrl+Z / Ctrl+Y)
    show3Dcrosshair: true,
    textHeight: 0.035,
    keyDebounceTime: 10,
  })
  await nv.attachToCanvas(canvas)
  const boxUploads = installBoxUploads(nv) // a pen move uploads its own voxels, not the whole drawing layer
  state.uploads = boxUploads.stats
  state.drawingChanged = boxUploads.changed
  state.renderCache = installRenderCache(nv, document) // the 3D pane is rendered again once the user pauses
  state.pacing = installFramePacing(nv) // a redraw waits for the previous one to leave the GPU: no input queues
  nv.setRadiologicalConvention(true)
  nv.setSliceType(LAYOUTS[state.layout])
  nv.onLocationChange = (location) => showLocation(location)
  return nv
}

function drawLut(args) {
  const colours = args.colors || [[0, 0, 0], [255, 64, 64], [60, 200, 80], [255, 220, 40]]
  const visible = new Set(shownLabels())
  const R = [], G = [], B = [], A = [], I = []
  for (let i = 0; i < 4; i++) {
    R.push(colours[i][0]); G.push(colours[i][1]); B.push(colours[i][2])
    A.push(i > 0 && visible.has(i) ? 255 : 0); I.push(i)
  }
  return { R, G, B, A, I, labels: ['', 'NCR', 'ED', 'ET'] }
}

async function fetchImage(url, name) {
  const response = await fetch(resolveUrl(url))
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`)
  const buffer = await response.arrayBuffer()
  mark(`fetched ${name}`)
  const image = await NVImage.loadFromUrl({ url: buffer, name })
  mark(`parsed ${name}`)
  return image
}

function resolveUrl(url) {
  // The iframe lives at <base>/component/<name>/index.html; media URLs are relative to <base>.
  if (/^https?:/.test(url)) return url
  const path = window.location.pathname
  const cut = path.indexOf('/component/')
  const base = cut >= 0 ? path.slice(0, cut) : ''
  return `${window.location.origin}${base}${url}`
}

function prefetch(args) {
  // Fetch and parse the shown modality and the labels in parallel (also while WebGL starts: with
  // software WebGL the shaders compile in Chromium's GPU process, the parsing runs here).
  const spec = shownSpec(args)
  if (spec) prefetchVolume(spec)
  if (args.labels_url && args.labels_token !== state.labelsToken && !state.labelsPrefetch) {
    state.labelsPrefetch = fetchImage(args.labels_url, 'labels.nii.gz')
    state.labelsPrefetchUrl = args.labels_url
  }
}

// A volume's ``name`` is unique on the page ("FLAIR"; "Host:FLAIR" when Python sends a second set of volumes,
// e.g. a sample and its host); ``label`` is the modality alone, ``group`` the set's caption in the bar.
const modalityOf = (name) => name.slice(name.indexOf(':') + 1)
const volumeLabel = (spec) => spec.label || spec.name
const displayName = (spec) => (spec.group ? `${spec.group} ${volumeLabel(spec)}` : volumeLabel(spec))

function shownIndex(args) {
  // the modality picked in the viewer bar (kept per browser) if this case has it, else Python's choice
  const volumes = args.volumes || []
  let picked = state.modality === null ? -1 : volumes.findIndex((v) => v.name === state.modality)
  if (picked < 0 && state.modality !== null) { // the same modality of another page's volume set
    picked = volumes.findIndex((v) => volumeLabel(v) === modalityOf(state.modality))
  }
  return picked >= 0 ? picked : (args.active < volumes.length ? args.active : 0)
}
const shownSpec = (args) => (args.volumes || [])[shownIndex(args)]

function prefetchVolume(spec) {
  if (!state.volumes.has(spec.url) && !state.volumePrefetch.has(spec.url)) {
    state.volumePrefetch.set(spec.url, fetchImage(spec.url, `${spec.name}.nii.gz`))
  }
}

async function volumeImage(spec) {
  // each modality is fetched and parsed once per case
  let image = state.volumes.get(spec.url)
  if (!image) {
    prefetchVolume(spec)
    image = await state.volumePrefetch.get(spec.url)
    state.volumePrefetch.delete(spec.url)
    state.volumes.set(spec.url, image)
  }
  return image
}

// The four modalities live on the GPU at once. NiiVue 0.69 keeps one background: its RGBA 3D texture
// (``volumeTexture``, the volume through its colour map and window) and the 3D render's gradient texture.
// Making another volume the background (setVolume) rebuilds both: seconds with software WebGL. So each
// modality's two textures are built once (refreshLayers with NiiVue's own slots emptied, so it creates new
// textures instead of deleting the shown ones) and a switch only exchanges the texture handles and the
// background image (the read-out's values), then redraws: NiiVue binds its textures anew on every draw.
// A window/level drag rebuilds the shown modality's textures in NiiVue's slots; they go back to the cache
// with it on the next switch, so each modality keeps its own window. All modalities share the case's grid.
// A gradient is built only when a 3D pane first needs it (render_cache.js): ``grad`` is null until then.
function canSwapTextures(nv) {
  return nv.volumes.length > 0 && !nv.opts.is2DSliceShader && nv.volumeTexture && (nv.gradientTexture || nv.gradientStale)
}

function currentTextures(nv) {
  // the textures in NiiVue's background slots, to keep; a stale gradient is dropped (built again when needed)
  if (nv.gradientStale && nv.gradientTexture) { nv.gl.deleteTexture(nv.gradientTexture); nv.gradientTexture = null }
  return { vol: nv.volumeTexture, grad: nv.gradientStale ? null : nv.gradientTexture }
}

function showTextures(nv, textures) {
  nv.volumeTexture = textures.vol
  nv.gradientTexture = textures.grad
  nv.gradientStale = !textures.grad
}

function buildTextures(image) {
  const nv = state.nv
  const shown = { vol: nv.volumeTexture, grad: nv.gradientTexture, stale: nv.gradientStale, image: nv.volumes[0],
    back: nv.back }
  nv.volumeTexture = null
  nv.gradientTexture = null
  nv.volumes[0] = image
  nv.back = image
  try {
    nv.refreshLayers(image, 0)
    return currentTextures(nv)
  } finally {
    nv.volumeTexture = shown.vol
    nv.gradientTexture = shown.grad
    nv.gradientStale = shown.stale
    nv.volumes[0] = shown.image
    nv.back = shown.back
  }
}

function swapBackground(url, image) {
  const nv = state.nv
  let textures = state.textures.get(url)
  if (!textures) textures = buildTextures(image)
  state.textures.delete(url)
  state.textures.set(state.activeUrl, currentTextures(nv))
  showTextures(nv, textures)
  nv.volumes[0] = image
  nv.back = image
  nv.drawScene()
}

function dropTextures() {
  const gl = state.nv && state.nv.gl
  for (const t of state.textures.values()) { gl.deleteTexture(t.vol); if (t.grad) gl.deleteTexture(t.grad) }
  state.textures.clear()
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function warmModalities(args) {
  // After the page is shown: fetch, parse and build the other modalities' textures, one at a time and
  // between strokes (NiiVue blocks the page while it builds one), each as one step of the loading chain
  // (a click or a labels reload waits for one build at most), so that every switch exchanges textures.
  // Only the shown set's volumes: a second set (the host beside a sample) is built when first picked.
  const current = () => args.case_key === state.lastCaseKey && canSwapTextures(state.nv)
  const group = (shownSpec(args) || {}).group || ''
  for (const spec of args.volumes || []) {
    if (!current()) return
    if ((spec.group || '') !== group) continue
    if (spec.url === state.activeUrl || state.textures.has(spec.url)) continue
    const image = await volumeImage(spec)
    while (state.snapshot) await sleep(100) // not during a stroke
    await (state.loading = state.loading.then(() => {
      if (!current() || spec.url === state.activeUrl || state.textures.has(spec.url)) return
      state.textures.set(spec.url, buildTextures(image))
      mark(`built ${spec.name}`)
    }).catch(fail))
    await sleep(30) // let clicks and keys through
  }
  if (current()) document.body.dataset.warm = String(state.textures.size + 1)
}

async function showVolume(args) {
  const nv = state.nv
  const spec = shownSpec(args)
  if (!spec || spec.url === state.activeUrl) return
  let image = state.volumes.get(spec.url)
  if (!image) {
    setStatus(`Loading ${displayName(spec)}…`, true)
    image = await volumeImage(spec)
  }
  const first = nv.volumes.length === 0
  if (first) {
    // the slices first; the 3D pane (its gradient: ~3.5 s here) once they and the labels are painted
    if (!state.timings.shown) state.renderCache.holdUntil(firstPaint)
    else state.renderCache.defer()
    nv.addVolume(image)
    mark('volume added')
  } else if (canSwapTextures(nv)) {
    swapBackground(spec.url, image) // keeps the drawing (same grid) and the crosshair
  } else {
    // no texture to exchange (a 2D-texture image): NiiVue rebuilds the background
    const crosshair = nv.scene.crosshairPos.slice()
    nv.volumes = [image]
    nv.setVolume(image, 0)
    nv.scene.crosshairPos = crosshair
    if (state.labelsToken !== null) nv.refreshDrawing(true)
  }
  state.activeUrl = spec.url
  document.body.dataset.modality = spec.name
  if (first) {
    const mm = savedCursor(args.case_key) || args.cursor_mm
    if (mm) nv.scene.crosshairPos = nv.mm2frac(mm)
    nv.drawScene() // addVolume uploaded and drew it already: only the cursor moved (no second upload)
    mark('image shown')
  }
}

async function showUncertainty(args) {
  // The prediction's per-voxel uncertainty as a NiiVue overlay (warm colours from 0.2 up: see
  // core.viewer.niivue.uncertainty_volume_bytes), added or removed when the toggle or the prediction changes.
  const nv = state.nv
  const overlay = state.uncertainty
  const url = overlay.on ? (args.uncertainty_url || '') : ''
  if (url === overlay.url) return
  if (overlay.image && nv.volumes.includes(overlay.image)) nv.removeVolume(overlay.image)
  overlay.image = null
  overlay.url = ''
  document.body.dataset.uncertainty = '0'
  if (!url) return
  setStatus('Loading the uncertainty…', true)
  const image = await fetchImage(url, 'uncertainty.nii.gz')
  if (!state.uncertainty.on || (state.args && state.args.uncertainty_url) !== url) return // changed meanwhile
  image.colormap = 'warm'
  image.colormapType = 1 // COLORMAP_TYPE.ZERO_TO_MAX_TRANSPARENT_BELOW_MIN: sure voxels (< cal_min) stay clear
  image.opacity = 0.8
  nv.addVolume(image)
  overlay.image = image
  overlay.url = url
  document.body.dataset.uncertainty = '1'
}

function toggleUncertainty() {
  state.uncertainty.on = !state.uncertainty.on
  renderBar()
  state.loading = state.loading.then(() => showUncertainty(state.args)).then(() => { refreshReadout(); renderStatus() })
    .catch(fail)
}

async function showLabels(args) {
  const nv = state.nv
  if (!args.labels_url) {
    if (state.labelsToken !== null && nv.drawBitmap) {
      nv.drawBitmap.fill(0)
      nv.refreshDrawing(true)
    }
    state.labelsToken = null
    return
  }
  if (args.labels_token === state.labelsToken) return
  setStatus('Loading labels…', true)
  mark('labels requested')
  const prefetched = state.labelsPrefetchUrl === args.labels_url ? state.labelsPrefetch : null
  state.labelsPrefetch = null
  const image = await (prefetched || fetchImage(args.labels_url, 'labels.nii.gz'))
  // Not over a stroke being drawn: its voxels are in the drawing only until mouse-up (then they are an edit).
  while (state.snapshot) await sleep(30)
  if (state.renderCache.stale()) state.renderCache.defer() // still loading the page: the 3D pane after the labels
  nv.loadDrawing(image) // uploads and draws
  mark('labels loaded')
  state.labelsToken = args.labels_token
  // The file holds this tab's strokes up to the revision Python had applied when it wrote these arguments; put
  // every later one back on top: the unacknowledged ones, and those acknowledged while the file was loading.
  const inFile = (args.acked_revs || {})[CLIENT] || 0
  state.recent = state.recent.filter((e) => e.rev > inFile && e.epoch === state.epoch)
  const later = new Map([...state.recent, ...state.pending].filter((e) => e.rev > inFile).map((e) => [e.rev, e]))
  forgetLocalHistory()
  const writes = [...later.keys()].sort((a, b) => a - b)
    .map((rev) => (later.get(rev).op === 'paint' ? later.get(rev) : state.localWrites.get(rev))).filter(Boolean)
  for (const write of writes) applyPaint(write)
  if (writes.length) nv.refreshDrawing(true) // a second whole upload only when edits went on top
}

function applyPaint(event) {
  const bitmap = state.nv.drawBitmap
  for (let i = 0; i < event.idx.length; i++) bitmap[event.idx[i]] = event.val[i]
}

// ------------------------------------------------------------------ editing
function setTool(tool) {
  state.tool = tool
  applyPen()
  renderBar()
  saveView()
}

function applyPen() {
  const nv = state.nv
  if (!nv) return
  const editable = !!(state.args && state.args.editable)
  // setDrawingEnabled redraws the whole scene: only when it changes (applyPen runs on every rerun, e.g. each
  // stroke's acknowledgement)
  if (nv.opts.drawingEnabled !== editable) nv.setDrawingEnabled(editable)
  if (!editable) return
  // Options only: setPenValue would redraw the whole scene (costly with software WebGL) for nothing visible.
  nv.opts.penValue = state.tool === 'erase' ? 0 : state.label
  nv.opts.isFilledPen = state.tool === 'fill'
  nv.opts.penSize = state.brush
  nv.drawFillOverwrites = true
}

function setBrush(size) {
  state.brush = Math.max(1, Math.min(50, size))
  applyPen()
  renderBar()
  saveView()
}

function setLabel(label) {
  state.label = label
  if (state.tool === 'erase') state.tool = 'pen'
  applyPen()
  renderBar()
  saveView()
}

function startStroke(e) {
  if (!state.args || !state.args.editable || e.button !== 0 || e.ctrlKey || e.shiftKey) return
  const bitmap = state.nv && state.nv.drawBitmap
  state.snapshot = bitmap ? bitmap.slice() : null
}

function endStroke() {
  const before = state.snapshot
  if (!before || state.strokeEnding) return
  state.strokeEnding = true
  const upAt = performance.now()
  // NiiVue finishes the stroke (and a filled outline) in its own mouseup handler: diff afterwards. The snapshot
  // stays until then: a labels file (another tab's edits) is not loaded over a stroke that is not diffed yet.
  setTimeout(() => {
    state.strokeEnding = false
    if (state.snapshot === before) state.snapshot = null // (a next stroke may have begun already)
    if (strokeLocation) { showLocation(strokeLocation); strokeLocation = null }
    const after = state.nv.drawBitmap
    if (!after || after.length !== before.length) return
    const idx = [], val = [], was = []
    for (let i = 0; i < after.length; i++) {
      if (after[i] !== before[i]) { idx.push(i); val.push(after[i]); was.push(before[i]) }
    }
    if (!idx.length) return
    const rev = queue({ op: 'paint', idx, val, tool: state.tool }, upAt)
    state.localUndo.push({ rev, idx, val, before: was })
    if (state.localUndo.length > historyLimit()) state.localUndo.shift()
    state.localRedo = [] // a new step ends the redo history (Python's too)
  }, 0)
}

function queue(event, upAt = performance.now()) {
  // returns the event's revision
  state.rev += 1
  state.pending.push({ ...event, rev: state.rev, epoch: state.epoch })
  state.recent.push(state.pending[state.pending.length - 1])
  state.strokeTimes.set(state.rev, { up: upAt, acked: null })
  if (state.strokeTimes.size > 2000) state.strokeTimes.delete(state.strokeTimes.keys().next().value)
  flush()
  return state.rev
}

function storePending() {
  try {
    const key = storageKey(`pending:${state.epoch}:${CLIENT}`)
    if (state.pending.length) localStorage.setItem(key, JSON.stringify(state.pending))
    else localStorage.removeItem(key)
  } catch (e) { /* storage full or off: the edits are still resent while the page lives */ }
}

function restorePending(epoch, acked) {
  try {
    const saved = JSON.parse(localStorage.getItem(storageKey(`pending:${epoch}:${CLIENT}`)) || '[]')
    // an undo shown at once before the reload is not on this page's screen: Python must send its file after it
    return Array.isArray(saved) ? saved.filter((e) => e.rev > acked && e.epoch === epoch)
      .map(({ mirrors, ...e }) => e) : []
  } catch (e) { return [] }
}

// One value with edits in flight at a time: strokes drawn while Python applies the previous ones go out
// together once it has answered (each value is a rerun of the page in Python and in the browser; a value
// sent during a rerun makes Streamlit stop that rerun and start again). Unanswered after SEND_RETRY_MS: sent
// again (the edits are numbered, Python applies each once).
const SEND_RETRY_MS = 3000
let inFlight = null // {rev, at}: newest revision of the last value sent with edits, until Python acknowledges it
let retryTimer = 0

function flush() {
  // Every unacknowledged edit goes out each time: a value that replaces an unread one loses nothing.
  storePending()
  renderStatus()
  const now = performance.now()
  if (inFlight && state.acked < inFlight.rev && now - inFlight.at < SEND_RETRY_MS) {
    clearTimeout(retryTimer)
    retryTimer = setTimeout(flush, SEND_RETRY_MS - (now - inFlight.at))
    return
  }
  clearTimeout(retryTimer)
  state.lastEventAt = now
  sentCursor = JSON.stringify(cursorMM())
  inFlight = state.pending.length ? { rev: state.pending[state.pending.length - 1].rev, at: now } : null
  setValue({ epoch: state.epoch, client: CLIENT, events: state.pending, cursor_mm: cursorMM(), sent: Date.now(),
    webgl: true })
}

function answered() {
  // Python acknowledged the value in flight: what was drawn meanwhile goes out now.
  if (!inFlight || state.acked < inFlight.rev) return
  inFlight = null
  clearTimeout(retryTimer)
  if (state.pending.length) flush()
}

function cursorMM() {
  const nv = state.nv
  if (!nv || !nv.volumes.length) return null
  return Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3).map((v) => Math.round(v * 100) / 100)
}

// Undo / redo of this tab's own strokes show at once: the stroke's voxels get their values back (or again) on
// screen, and Python is told which stroke the tab reverted (``mirrors``). Python checks that its own next step is
// that stroke and that the drawing was in step with it; if not (another tab drew since, a labels file changed
// the drawing, the history was shorter), it sends its labels file and the tab shows that. Anything else (no own
// stroke left to undo here) goes to Python and shows when its labels file comes back.
function historyLimit() { return (state.args && state.args.history_limit) || 30 }

function undo() { undoOrRedo('undo', state.localUndo, state.localRedo, 'before') }
function redo() { undoOrRedo('redo', state.localRedo, state.localUndo, 'val') }

function undoOrRedo(op, from, to, values) {
  if (!state.args || !state.args.editable) return
  const step = from.pop()
  if (!step || !state.nv || !state.nv.drawBitmap) { queue({ op }); return }
  const write = { idx: step.idx, val: step[values] }
  applyPaint(write)
  state.drawingChanged(step.idx)
  state.nv.refreshDrawing(true)
  to.push(step)
  const rev = queue({ op, mirrors: step.rev })
  state.localWrites.set(rev, write)
}

function forgetLocalHistory() {
  // The drawing now comes from a labels file: Python's history decides what an undo reverts.
  state.localUndo = []
  state.localRedo = []
}

// ------------------------------------------------------------------ keys (ITK-SNAP / Slicer habits)
function onKey(e) {
  const key = e.key
  const ctrl = e.ctrlKey || e.metaKey
  let handled = true
  if (ctrl && (key === 'z' || key === 'Z') && !e.shiftKey) undo()
  else if (ctrl && (key === 'y' || key === 'Y' || ((key === 'z' || key === 'Z') && e.shiftKey))) redo()
  else if (key === '[') setBrush(state.brush - 1)
  else if (key === ']') setBrush(state.brush + 1)
  else if (['1', '2', '3'].includes(key)) setLabel(Number(key))
  else if (key === '0' || key === 'e' || key === 'E') setTool('erase')
  else if (key === 'p' || key === 'P') setTool('pen')
  else if (key === 'f' || key === 'F') setTool('fill')
  else if (key === 'PageUp' || key === 'PageDown') moveSlice(key === 'PageUp' ? 1 : -1)
  else if (key === 'r' || key === 'R') resetView()
  else if (ctrl) handled = false
  else if (['a', 's', 'c', 'm', 'v'].includes(key)) {
    const next = { a: 'axial', s: 'sagittal', c: 'coronal', m: 'multi', v: '3d' }[key]
    setLayout(next)
  } else handled = false
  if (handled) { e.preventDefault(); e.stopPropagation() }
}

const OWN_KEYS = new Set(['[', ']', '0', '1', '2', '3', 'e', 'E', 'p', 'P', 'f', 'F', 'r', 'R', 'a', 's', 'c', 'm', 'v'])

function moveSlice(step) {
  // Page Up / Down move the slice of the single view (axial in the 4-up view).
  const plane = state.layout === 'coronal' ? [0, step, 0] : state.layout === 'sagittal' ? [step, 0, 0] : [0, 0, step]
  state.nv.moveCrosshairInVox(...plane)
}

function resetView() {
  const nv = state.nv
  nv.scene.pan2Dxyzmm = [0, 0, 0, 1]
  nv.drawScene()
}

const lookKey = () => `${state.layout}|${state.nv.drawOpacity}`

function setLayout(layout) {
  state.layout = layout
  state.nv.setSliceType(LAYOUTS[layout])
  state.shown.layout = lookKey()
  renderBar()
  saveView()
}

function onWheel(e) {
  // Ctrl + wheel zooms (NiiVue zooms when its drag mode is "pan"); the plain wheel scrolls slices.
  if (!(e.ctrlKey || e.metaKey) || !state.nv) return
  const nv = state.nv
  const previous = nv.opts.dragMode
  nv.opts.dragMode = DRAG_MODE.pan
  setTimeout(() => { nv.opts.dragMode = previous }, 0)
}

// ------------------------------------------------------------------ toolbar and status
function button(text, on, onClick, title = '', disabled = false) {
  const b = document.createElement('button')
  b.innerHTML = text
  if (on) b.className = 'on'
  b.title = title
  b.disabled = disabled
  b.addEventListener('click', (e) => { e.preventDefault(); onClick(); canvas.focus() })
  return b
}

function group(...children) {
  const g = document.createElement('span')
  g.className = 'group'
  children.forEach((c) => g.appendChild(c))
  return g
}

function renderBar() {
  const bar = $('bar')
  bar.innerHTML = ''
  const args = state.args || {}
  const layouts = Object.keys(LAYOUTS).map((l) => button(LAYOUT_LABELS[l], state.layout === l, () => setLayout(l),
    `${LAYOUT_LABELS[l]} view (key ${{ multi: 'm', axial: 'a', coronal: 'c', sagittal: 's', '3d': 'v' }[l]})`))
  bar.appendChild(group(...layouts))
  const shown = args.volumes ? shownIndex(args) : -1
  const specs = args.volumes || []
  const groups = [...new Set(specs.map((v) => v.group || ''))]
  for (const name of groups) {
    const buttons = specs.map((v, i) => [v, i]).filter(([v]) => (v.group || '') === name).map(([v, i]) => button(
      volumeLabel(v), i === shown, () => chooseVolume(i),
      `Show ${displayName(v)} (loaded once: switching does not ask the server)`))
    if (name) {
      const caption = document.createElement('span')
      caption.className = 'hint'
      caption.textContent = `${name} `
      buttons.unshift(caption)
    }
    if (specs.length > 1) bar.appendChild(group(...buttons))
  }
  if (args.labels_url) bar.appendChild(labelControls(args))
  if (args.uncertainty_url) {
    bar.appendChild(group(button('Uncertainty', state.uncertainty.on, toggleUncertainty,
      "Overlay the model's per-voxel uncertainty (a WT, TC or ET probability near 0.5): where to look first")))
  }
  if (args.editable) {
    const colours = args.colors || []
    const labels = [1, 2, 3].map((l) => button(
      `<span class="swatch" style="background: rgb(${(colours[l] || [0, 0, 0]).join(',')})"></span>${NAMES[l]}`,
      state.tool !== 'erase' && state.label === l, () => setLabel(l), `Paint ${NAMES[l]} (key ${l})`))
    bar.appendChild(group(...labels))
    bar.appendChild(group(
      button('Pen', state.tool === 'pen', () => setTool('pen'), 'Freehand brush (key p)'),
      button('Eraser', state.tool === 'erase', () => setTool('erase'), 'Erase to background (key e or 0)'),
      button('Fill', state.tool === 'fill', () => setTool('fill'), 'Draw an outline: its inside is filled (key f)'),
    ))
    const size = document.createElement('span')
    size.className = 'hint'
    size.textContent = ` ${state.brush} vox `
    bar.appendChild(group(button('−', false, () => setBrush(state.brush - 1), 'Smaller brush (key [)'), size,
      button('+', false, () => setBrush(state.brush + 1), 'Larger brush (key ])')))
    bar.appendChild(group(button('↶ Undo', false, undo, 'Undo (Ctrl+Z)'), button('↷ Redo', false, redo, 'Redo (Ctrl+Y)')))
  }
  const hint = document.createElement('span')
  hint.className = 'hint'
  hint.textContent = 'wheel: slice · right-drag: window/level · Ctrl+wheel: zoom · middle/Ctrl-drag: pan · r: reset'
  bar.appendChild(hint)
}

// ------------------------------------------------------------------ label visibility and opacity (browser only)
function shownLabels() { return state.visible || (state.args && state.args.visible) || [1, 2, 3] }
function shownOpacity() { return state.opacity ?? (state.args && state.args.opacity) ?? 0.5 }

function labelControls(args) {
  // Show / hide each label and the layer's opacity: set here, no Python rerun (a colour-table update, ~ms).
  const colours = args.colors || []
  const shown = new Set(shownLabels())
  const toggles = [1, 2, 3].map((l) => {
    const b = button(`<span class="swatch" style="background: rgb(${(colours[l] || [0, 0, 0]).join(',')})"></span>`
      + `${shown.has(l) ? '☑' : '☐'} ${NAMES[l]}`, false, () => toggleLabel(l), `Show or hide ${NAMES[l]}`)
    b.className = 'eye'
    b.dataset.label = String(l)
    return b
  })
  const slider = document.createElement('input')
  slider.type = 'range'
  slider.min = '0'
  slider.max = '1'
  slider.step = '0.05'
  slider.value = String(shownOpacity())
  slider.title = 'Label opacity'
  slider.id = 'opacity'
  slider.addEventListener('input', () => setOpacity(Number(slider.value)))
  const caption = document.createElement('span')
  caption.className = 'hint'
  caption.textContent = 'show'
  return group(caption, ...toggles, slider)
}

function toggleLabel(label) {
  const shown = new Set(shownLabels())
  if (shown.has(label)) shown.delete(label)
  else shown.add(label)
  state.visible = [1, 2, 3].filter((l) => shown.has(l))
  const nv = state.nv
  if (nv && nv.drawLut && nv.drawLut.lut && state.shown.lut) {
    // Only the colour table's alpha changes: refresh that texture, not every volume (setDrawColormap would).
    for (const l of [1, 2, 3]) nv.drawLut.lut[l * 4 + 3] = shown.has(l) ? 255 : 0
    nv.refreshColormaps()
    nv.drawScene()
    state.shown.lut = JSON.stringify(drawLut(state.args))
  }
  renderBar()
  saveView()
  document.body.dataset.visible = state.visible.join(',')
}

function setOpacity(value) {
  state.opacity = Math.max(0, Math.min(1, value))
  if (state.nv) {
    state.nv.drawOpacity = state.opacity
    state.shown.layout = lookKey()
    state.nv.drawScene()
  }
  saveView()
}

function chooseVolume(i) {
  if (!state.args || !state.args.volumes[i]) return
  state.modality = state.args.volumes[i].name
  saveView()
  renderBar()
  state.loading = state.loading.then(() => showVolume(state.args)).then(() => { refreshReadout(); renderStatus() })
    .catch(fail)
}

const CLASS_NAMES = ['background', 'NCR', 'ED', 'ET']

function caseVoxel(mm) {
  // voxel i, j, k of the case's own file (its affine's inverse, from Python), not NiiVue's RAS grid
  const m = state.args && state.args.world_to_voxel
  if (!m || !mm) return null
  return [0, 1, 2].map((r) => Math.round(m[r][0] * mm[0] + m[r][1] * mm[1] + m[r][2] * mm[2] + m[r][3]))
}

function labelAtCrosshair() {
  const nv = state.nv
  if (state.labelsToken === null || !nv.drawBitmap || !nv.back) return null
  const v = nv.frac2vox(nv.scene.crosshairPos) // RAS voxel of the drawing layer
  const d = nv.back.dims // RAS after NiiVue's reorientation, as its drawing layer
  const value = nv.drawBitmap[v[0] + v[1] * d[1] + v[2] * d[1] * d[2]]
  return value === undefined ? null : CLASS_NAMES[value] || String(value)
}

function readout(location) {
  // "voxel i, j, k · FLAIR 381.7 · ED": the case's voxel, the shown modality's intensity, the label's name
  const nv = state.nv
  if (!nv || !nv.volumes.length || !state.args) return ''
  const ijk = caseVoxel(Array.from(nv.frac2mm(nv.scene.crosshairPos)))
  const spec = shownSpec(state.args)
  const values = location && location.values
  const value = values && values.length ? Number(values[0].value) : NaN
  const label = labelAtCrosshair()
  const overlay = state.uncertainty.image ? nv.volumes.indexOf(state.uncertainty.image) : -1
  const uncertainty = overlay > 0 && values && values[overlay] ? Number(values[overlay].value) : NaN
  return [
    ijk ? `voxel ${ijk.join(', ')}` : '',
    spec && Number.isFinite(value) ? `${displayName(spec)} ${Number(value.toPrecision(4))}` : '',
    label || '',
    Number.isFinite(uncertainty) ? `uncertainty ${uncertainty.toFixed(2)}` : '',
  ].filter(Boolean).join(' · ')
}

function refreshReadout() {
  // after a modality or label change the last location is stale: ask NiiVue for a fresh one
  const nv = state.nv
  if (nv && nv.volumes.length && typeof nv.createOnLocationChange === 'function') nv.createOnLocationChange()
}

let locationText = ''
let cursorTimer = 0
let sentCursor = ''
let strokeLocation = null // the pen's last location during a stroke, shown at mouse-up
function showLocation(location) {
  if (state.snapshot) { strokeLocation = location; return } // each read-out change costs a frame: not per pen move
  locationText = readout(location)
  renderStatus()
  saveView()
  // Python learns the cursor (for its slice tools and read-outs) once the user pauses, not per wheel step.
  clearTimeout(cursorTimer)
  cursorTimer = setTimeout(() => {
    const mm = JSON.stringify(cursorMM())
    if (mm !== sentCursor && !state.snapshot) { sentCursor = mm; flush() }
  }, 800)
}

function setStatus(text, busy = false) {
  $('status').innerHTML = busy ? `<span class="busy">${text}</span>` : text
}

function renderStatus() {
  const unsaved = state.pending.length
  const sync = state.args && state.args.editable
    ? (unsaved ? `<span class="busy">saving ${unsaved} edit(s)…</span>` : 'all edits saved')
    : ''
  setStatus([locationText, sync].filter(Boolean).join(' · ') || 'Ready')
}

function fail(error) {
  console.error(error)
  firstPainted() // the 3D pane is not held back by a page that will not paint
  setStatus(`Viewer error: ${error && error.message ? error.message : error}`, true)
}

// ------------------------------------------------------------------ render (new arguments from Python)
async function onRender(args) {
  const first = state.args === null
  state.args = args
  const acked = (args.acked_revs || {})[CLIENT] || 0 // this tab's own revisions
  if (args.epoch !== state.epoch) {
    state.epoch = args.epoch
    state.pending = restorePending(args.epoch, acked) // edits a reload cut off before Python had them
    state.recent = [...state.pending]
    state.rev = state.pending.length ? state.pending[state.pending.length - 1].rev : 0
    state.acked = 0
    inFlight = null // the old epoch's value: its edits are void
    forgetLocalHistory()
    state.localWrites.clear()
  }
  if (acked > state.acked) {
    const now = performance.now()
    for (const [rev, t] of state.strokeTimes) if (rev <= acked && t.acked === null) t.acked = now
  }
  state.acked = Math.max(state.acked, acked)
  state.rev = Math.max(state.rev, state.acked)
  const before = state.pending.length
  state.pending = state.pending.filter((e) => e.rev > state.acked)
  if (!state.labelsLoads) { // a later file holds them
    state.recent = state.recent.filter((e) => e.rev > state.acked)
    for (const rev of [...state.localWrites.keys()]) if (rev <= state.acked) state.localWrites.delete(rev)
  }
  if (state.pending.length !== before) storePending()
  answered()
  const height = args.height || 600
  $('viewport').style.height = `${height}px`
  if (first) {
    loadView()
    if (args.layout && args.layout in LAYOUTS && !localStorage.getItem(storageKey('view'))) state.layout = args.layout
    if (!hasWebGL2()) {
      $('nogl').style.display = 'block'
      $('viewport').style.display = 'none'
      setFrameHeight(document.body.scrollHeight)
      setValue({ webgl: false, events: [], epoch: args.epoch })
      return
    }
    mark('first render')
    if (args.volumes && args.volumes.length) prefetch(args)
    state.nv = await createViewer()
    mark('webgl ready')
    canvas.addEventListener('mousedown', startStroke, true)
    window.addEventListener('mouseup', endStroke, true)
    // a button released outside the viewer: the next move over it with no button down ends the stroke
    window.addEventListener('mousemove', (e) => { if (state.snapshot && (e.buttons & 1) === 0) endStroke() }, true)
    window.addEventListener('keydown', onKey, true) // any focus inside the viewer (canvas or its toolbar)
    window.addEventListener('keyup', (e) => { if (OWN_KEYS.has(e.key)) e.stopPropagation() }, true) // not NiiVue's too
    canvas.addEventListener('wheel', onWheel, { capture: true, passive: true })
    canvas.addEventListener('mouseenter', () => { window.focus(); canvas.focus({ preventScroll: true }) })
    document.body.addEventListener('mousedown', (e) => { if (e.target !== canvas) canvas.focus({ preventScroll: true }) })
  }
  renderBar()
  setFrameHeight(document.body.scrollHeight)
  const nv = state.nv
  if (!nv) return
  // A rerun (e.g. the acknowledgement of a stroke) changes nothing on screen unless these changed:
  // setDrawColormap re-uploads every volume and each setter redraws, which costs seconds in software WebGL.
  const lut = drawLut(args)
  const lutKey = JSON.stringify(lut)
  if (lutKey !== state.shown.lut) {
    nv.setDrawColormap(lut)
    state.shown.lut = lutKey
  }
  nv.drawOpacity = shownOpacity()
  if (args.case_key !== state.lastCaseKey) {
    // another case: forget its images
    dropTextures()
    for (const v of [...nv.volumes]) nv.removeVolume(v)
    state.uncertainty.image = null
    state.uncertainty.url = ''
    state.volumes.clear()
    if (state.lastCaseKey) { state.volumePrefetch.clear(); state.labelsPrefetch = null } // not the first case's
    state.activeUrl = ''
    state.labelsToken = null
    state.lastCaseKey = args.case_key
  }
  state.labelsLoads += 1
  state.loading = state.loading
    .then(() => showVolume(args))
    .then(() => showLabels(args))
    .then(() => showUncertainty(args))
    .finally(() => { state.labelsLoads -= 1 })
    .then(() => {
      applyPen()
      // Loading a volume or labels drew the scene already; otherwise redraw only for a new layout or opacity.
      const drawn = state.shown.layout === ''
      if (lookKey() !== state.shown.layout) {
        state.shown.layout = lookKey()
        nv.opts.sliceType = LAYOUTS[state.layout]
        if (!drawn) nv.drawScene()
      }
      refreshReadout()
      renderStatus()
      let painted = Promise.resolve()
      if (!state.timings.shown) {
        mark('shown')
        if (state.pending.length) flush() // resend what a reload interrupted
        painted = state.pacing.idle().then(() => { // the GPU has drawn it (a 1-pixel read waits for that)
          nv.gl.readPixels(1, 1, 1, 1, nv.gl.RGBA, nv.gl.UNSIGNED_BYTE, new Uint8Array(4))
          mark('painted')
        }).finally(firstPainted)
      }
      if (state.warming !== args.case_key) {
        state.warming = args.case_key // once per case (not a loading step itself: see warmModalities)
        painted.then(() => warmModalities(args)).catch(fail) // the other modalities once this one is on screen
      }
      document.body.dataset.ready = '1'
      document.body.dataset.acked = String(state.acked)
      document.body.dataset.labelsToken = String(state.labelsToken)
    })
    .catch(fail)
}

window.addEventListener('message', (event) => {
  const data = event.data
  if (data && data.type === 'streamlit:render') onRender(data.args || {})
})
window.addEventListener('resize', () => setFrameHeight(document.body.scrollHeight))
// for tests and debugging
window.bratsViewer = state
send('streamlit:componentReady', { apiVersion: 1 })
