// The 3D pane waits while the user works in the slices.
//
// NiiVue redraws every pane of the canvas for each change. With software WebGL (SwiftShader) its 3D pane (a
// ray-cast volume render, the label layer included) costs ~0.8 s of the GPU process per redraw against ~40 ms
// for the three slices, so every pen move, wheel step or button in the 4-up view waited for a new 3D picture.
// While the user interacts (a mouse button held down, then ``idleMs`` after the last pointer, wheel or key event)
// the 3D pane shows its last picture, copied back from a framebuffer (a blit, ~1 ms), or stays empty if it has
// none yet; once the user pauses it is rendered again. Only with a single-sampled canvas (a blit into a
// multisampled one is not allowed; machines that antialias have a hardware GPU, where the render is fast anyway).
//
// The 3D render's shading needs the background's gradient texture, which NiiVue built with every volume texture
// (3.5 s of ~4 s per volume in SwiftShader). Here NiiVue builds it lazily (``nv.lazyGradient``, see build.mjs): a
// volume texture leaves ``nv.gradientStale``, and the gradient is built between two frames, before the first 3D
// render that needs it. Slices never wait for it.

/** Integer canvas rectangle (bottom-left origin, as GL wants it) of NiiVue's top-left ``ltwh`` tile. */
function glRect(gl, ltwh) {
  const x = Math.round(ltwh[0])
  const w = Math.round(ltwh[2])
  const h = Math.round(ltwh[3])
  return [x, gl.drawingBufferHeight - Math.round(ltwh[1]) - h, w, h]
}

/**
 * Keep NiiVue's 3D pane from being ray-cast again on every interaction.
 *
 * @param nv - the Niivue instance (its ``draw3D`` is wrapped).
 * @param target - where pointer, wheel and key events count as interaction (capture phase), e.g. ``document``.
 * @param idleMs - pause after the last interaction event before the 3D pane is rendered again.
 * @returns ``{stats: {rendered, reused, gradients}, stale(), settle(), defer(), holdUntil(promise)}``: counters,
 *   whether the 3D pane shows an older picture (or none), rendering it now (for tests and benchmarks), putting it
 *   off as for an interaction, and putting it off until a promise settles (while a page paints its first pictures).
 */
export function installRenderCache(nv, target, idleMs = 400) {
  const gl = nv.gl
  const stats = { rendered: 0, reused: 0, gradients: 0 }
  nv.lazyGradient = true
  let gradientTimer = 0
  const cache = { fbo: null, rb: null, size: [0, 0], rect: null, slice: null }
  let fast = false
  let pointerDown = false
  let stale = false
  let timer = 0
  let held = 0 // holdUntil calls not settled yet
  const singleSampled = gl.getParameter(gl.SAMPLES) === 0

  function blit(from, to, src, dst) {
    const read = gl.getParameter(gl.READ_FRAMEBUFFER_BINDING)
    const draw = gl.getParameter(gl.DRAW_FRAMEBUFFER_BINDING)
    const scissor = gl.isEnabled(gl.SCISSOR_TEST)
    gl.disable(gl.SCISSOR_TEST)
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, from)
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, to)
    gl.blitFramebuffer(src[0], src[1], src[0] + src[2], src[1] + src[3], dst[0], dst[1], dst[0] + dst[2],
      dst[1] + dst[3], gl.COLOR_BUFFER_BIT, gl.NEAREST)
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, read)
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, draw)
    if (scissor) gl.enable(gl.SCISSOR_TEST)
  }

  function capture(rect) {
    const [, , w, h] = rect
    if (!cache.fbo || cache.size[0] !== w || cache.size[1] !== h) {
      const previous = gl.getParameter(gl.RENDERBUFFER_BINDING)
      if (cache.rb) gl.deleteRenderbuffer(cache.rb)
      cache.fbo = cache.fbo || gl.createFramebuffer()
      cache.rb = gl.createRenderbuffer()
      gl.bindRenderbuffer(gl.RENDERBUFFER, cache.rb)
      gl.renderbufferStorage(gl.RENDERBUFFER, gl.RGBA8, w, h)
      gl.bindRenderbuffer(gl.RENDERBUFFER, previous)
      const draw = gl.getParameter(gl.DRAW_FRAMEBUFFER_BINDING)
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, cache.fbo)
      gl.framebufferRenderbuffer(gl.DRAW_FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.RENDERBUFFER, cache.rb)
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, draw)
      cache.size = [w, h]
    }
    blit(gl.getParameter(gl.DRAW_FRAMEBUFFER_BINDING), cache.fbo, rect, [0, 0, w, h])
  }

  const draw3D = nv.draw3D.bind(nv)
  nv.draw3D = (ltwh = [0, 0, 0, 0], ...rest) => {
    const mosaic = rest[3] !== undefined && rest[3] !== null // an azimuth: a mosaic tile, not the 3D pane
    const rect = ltwh[2] > 0 && ltwh[3] > 0 && !mosaic ? glRect(gl, ltwh) : null
    const quick = fast && rect && singleSampled
    if (quick && !(cache.rect && cache.slice && rect.every((v, i) => v === cache.rect[i]))) {
      stale = true // no picture of this pane yet (a new page or layout): it stays empty until the user pauses
      return undefined
    }
    if (quick) {
      // what draw3D registers for clicks on the pane (a click there still rotates or picks)
      nv.screenSlices.push({ ...cache.slice, leftTopWidthHeight: cache.slice.leftTopWidthHeight.slice() })
      blit(cache.fbo, gl.getParameter(gl.DRAW_FRAMEBUFFER_BINDING), [0, 0, rect[2], rect[3]], rect)
      stats.reused += 1
      stale = true
      return undefined
    }
    if (nv.gradientStale) { // build the gradient outside this frame, then draw again
      stale = true
      buildGradientSoon()
      return undefined
    }
    const first = nv.screenSlices.length
    const out = draw3D(ltwh, ...rest)
    stats.rendered += 1
    if (rect && singleSampled) {
      capture(rect)
      cache.rect = rect
      cache.slice = nv.screenSlices[first]
      stale = false
    }
    return out
  }

  function buildGradient() { // outside a frame only: it draws into framebuffers of its own
    if (!nv.gradientStale || !nv.back) return false
    nv.gradientStale = false
    nv.gradientGL(nv.back.hdr)
    stats.gradients += 1
    return true
  }
  function buildGradientSoon() {
    if (gradientTimer) return
    gradientTimer = setTimeout(() => {
      gradientTimer = 0
      if (buildGradient()) nv.drawScene()
    }, 0)
  }

  function settle() {
    clearTimeout(timer)
    timer = 0
    fast = false
    buildGradient()
    if (stale) nv.drawScene()
  }
  function later() {
    clearTimeout(timer)
    timer = setTimeout(() => { if (!pointerDown && !held) settle() }, idleMs)
  }
  // The 3D pane (and its gradient) waits until ``promise`` settles, or ``maxMs`` at most, then as after an
  // interaction: at page open the GPU draws the slices and labels first (its queue is in order).
  function holdUntil(promise, maxMs = 15000) {
    fast = true
    clearTimeout(timer)
    held += 1
    let done = false
    const release = () => { if (done) return; done = true; held -= 1; if (!held) later() }
    Promise.resolve(promise).finally(release)
    setTimeout(release, maxMs)
  }
  const begin = () => { fast = true; later() }
  target.addEventListener('pointerdown', () => { pointerDown = true; fast = true; clearTimeout(timer) }, true)
  window.addEventListener('pointerup', () => { pointerDown = false; later() }, true)
  window.addEventListener('pointercancel', () => { pointerDown = false; later() }, true)
  target.addEventListener('wheel', begin, { capture: true, passive: true })
  for (const type of ['keydown', 'click', 'input']) target.addEventListener(type, begin, true) // keys, bar, slider
  return { stats, stale: () => stale, settle, defer: begin, holdUntil }
}
