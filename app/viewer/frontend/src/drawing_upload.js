// Pen strokes upload only the voxels they touched.
//
// NiiVue copies the whole drawing layer (240 x 240 x 155 bytes for a BraTS case) to the GPU after every pen move
// (refreshDrawing -> texSubImage3D of the full volume): 50-400 ms each with software WebGL (SwiftShader), so a
// stroke of a few moves kept the browser busy for over a second. Every pen voxel goes through drawPt or
// drawPenLine (and drawPenFilled at mouse-up for the Fill tool), so their box is known: the next refreshDrawing
// uploads that box only (WebGL2 unpack parameters pick it out of the full bitmap). Anything else that changes the
// drawing (loading a file, applying another tab's edits) leaves no box and gets NiiVue's full upload, unless the
// caller names the voxels it changed (``changed``: an undo or redo shown before Python confirms it).

const TEXTURE7_DRAW = 33991 // gl.TEXTURE7: NiiVue's drawing texture unit (TEXTURE_CONSTANTS.TEXTURE7_DRAW)

/** A box of voxels [x0, y0, z0, x1, y1, z1] (inclusive), grown by points and clamped to the volume. */
function grow(box, points, radius, dims) {
  const out = box ? box.slice() : [Infinity, Infinity, Infinity, -Infinity, -Infinity, -Infinity]
  for (const p of points) {
    for (let a = 0; a < 3; a++) {
      out[a] = Math.max(0, Math.min(out[a], Math.round(p[a]) - radius))
      out[a + 3] = Math.min(dims[a + 1] - 1, Math.max(out[a + 3], Math.round(p[a]) + radius))
    }
  }
  return out
}

/** Upload the voxels in ``box`` of ``bitmap`` (NiiVue's RAS drawing order) into the drawing texture. */
export function uploadBox(gl, texture, bitmap, dims, box) {
  const [x0, y0, z0, x1, y1, z1] = box
  gl.activeTexture(TEXTURE7_DRAW)
  gl.bindTexture(gl.TEXTURE_3D, texture)
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1)
  gl.pixelStorei(gl.UNPACK_ROW_LENGTH, dims[1])
  gl.pixelStorei(gl.UNPACK_IMAGE_HEIGHT, dims[2])
  gl.pixelStorei(gl.UNPACK_SKIP_PIXELS, x0)
  gl.pixelStorei(gl.UNPACK_SKIP_ROWS, y0)
  gl.pixelStorei(gl.UNPACK_SKIP_IMAGES, z0)
  try {
    gl.texSubImage3D(gl.TEXTURE_3D, 0, x0, y0, z0, x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1, gl.RED, gl.UNSIGNED_BYTE,
      bitmap)
  } finally {
    for (const p of [gl.UNPACK_ROW_LENGTH, gl.UNPACK_IMAGE_HEIGHT, gl.UNPACK_SKIP_PIXELS, gl.UNPACK_SKIP_ROWS,
      gl.UNPACK_SKIP_IMAGES]) gl.pixelStorei(p, 0)
  }
}

/**
 * Make ``nv``'s pen strokes upload only what they changed.
 *
 * @param nv - the Niivue instance (its drawPt, drawPenLine, drawPenFilled and refreshDrawing are wrapped).
 * @returns ``{stats, changed}``: counters for tests and benchmarks (``{boxes, full}``: uploads done each way), and
 *   ``changed(idx)``: the caller changed the drawing bitmap at these flat (RAS) indices; the next refreshDrawing
 *   uploads their box.
 */
export function installBoxUploads(nv) {
  const stats = { boxes: 0, full: 0 }
  let dirty = null // voxels changed since the last upload
  let stroke = null // voxels of the current stroke (the Fill tool fills inside them at mouse-up)
  const radius = () => Math.floor(Math.max(1, nv.opts.penSize || 1) / 2)
  const usable = () => !nv.opts.is2DSliceShader && !(nv.opts.smoothDrawing > 0) && nv.drawTexture && nv.drawBitmap &&
    nv.back && nv.back.dims && nv.drawBitmap.length === nv.back.dims[1] * nv.back.dims[2] * nv.back.dims[3]

  const touch = (points, first) => { // the pen's voxels: into the stroke's box and the next upload's
    if (!nv.back) return
    stroke = grow(first ? null : stroke, points, radius(), nv.back.dims)
    dirty = grow(dirty, points, radius(), nv.back.dims)
  }
  const drawPt = nv.drawPt.bind(nv)
  nv.drawPt = (x, y, z, penValue, drawBitmap = null) => {
    if (!drawBitmap) touch([[x, y, z]], true) // a stroke's first point (drawPenLine does the others)
    drawPt(x, y, z, penValue, drawBitmap)
  }
  const drawPenLine = nv.drawPenLine.bind(nv)
  nv.drawPenLine = (ptA, ptB, penValue) => {
    touch([ptA, ptB], false)
    drawPenLine(ptA, ptB, penValue)
  }
  const drawPenFilled = nv.drawPenFilled.bind(nv)
  nv.drawPenFilled = () => {
    // The fill stays inside the outline's box (in the outline's slice).
    if (stroke) dirty = grow(dirty, [stroke.slice(0, 3), stroke.slice(3)], 0, nv.back.dims)
    drawPenFilled()
  }
  const refreshDrawing = nv.refreshDrawing.bind(nv)
  nv.refreshDrawing = (isForceRedraw = true, useClickToSegmentBitmap = false) => {
    const box = dirty
    dirty = null
    if (!box || box[0] > box[3] || useClickToSegmentBitmap || !usable()) {
      stats.full += 1
      refreshDrawing(isForceRedraw, useClickToSegmentBitmap)
      return
    }
    uploadBox(nv.gl, nv.drawTexture, nv.drawBitmap, nv.back.dims, box)
    stats.boxes += 1
    if (isForceRedraw) nv.drawScene()
  }
  const changed = (idx) => {
    if (!nv.back || !idx.length) return
    const [, nx, ny] = nv.back.dims
    const points = []
    for (const i of idx) points.push([i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))])
    dirty = grow(dirty, points, 0, nv.back.dims)
  }
  return { stats, changed }
}
