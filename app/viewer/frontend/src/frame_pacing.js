// One redraw in flight at a time: drop frames, never input.
//
// NiiVue redraws synchronously in its mouse handlers, once per pen move, wheel step or drag. With software
// WebGL a redraw runs for 40-80 ms (a slice view) in the GPU process after the JavaScript call returned, so at
// hand speed the redraws queue up and every later input event (and its acknowledgement to the page) waits behind
// them. Here a redraw asked for while the previous one is still on the GPU (a WebGL2 fence not yet signalled)
// is put off to the next animation frame in which the GPU is free, and all such requests collapse into that one
// redraw: the screen shows the newest state at the rate the GPU manages, and no input waits. With a hardware GPU
// the fence is signalled before the next event and nothing changes.

/**
 * Pace ``nv``'s redraws to its GPU.
 *
 * @param nv - the Niivue instance (its ``drawScene`` is wrapped).
 * @returns ``{stats: {drawn, deferred}, idle()}``: counters, and a promise that resolves once no redraw is
 *   waiting and the last one has reached the GPU's end (for tests and benchmarks).
 */
export function installFramePacing(nv) {
  const gl = nv.gl
  const stats = { drawn: 0, deferred: 0 }
  let fence = null
  let waiting = false
  let scheduled = false
  const drawScene = nv.drawScene.bind(nv)

  function busy() {
    if (!fence) return false
    if (gl.getSyncParameter(fence, gl.SYNC_STATUS) !== gl.SIGNALED) return true
    gl.deleteSync(fence)
    fence = null
    return false
  }
  function draw() {
    waiting = false
    const out = drawScene()
    if (fence) gl.deleteSync(fence)
    fence = gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0)
    gl.flush()
    stats.drawn += 1
    return out
  }
  function tick() {
    scheduled = false
    if (!waiting) return
    if (busy()) schedule()
    else draw()
  }
  function schedule() {
    if (scheduled) return
    scheduled = true
    requestAnimationFrame(tick)
  }
  nv.drawScene = () => {
    if (!busy()) return draw()
    waiting = true
    stats.deferred += 1
    schedule()
    return undefined
  }
  async function idle() {
    for (;;) {
      await new Promise((resolve) => requestAnimationFrame(resolve))
      if (!waiting && !busy()) return
    }
  }
  return { stats, idle }
}
