// Bundles src/index.js (+ NiiVue from npm) into build/ for the Streamlit component: `npm run build`.
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs'

// One change to NiiVue 0.69, made while bundling (node_modules stays as npm installed it): refreshLayers builds the
// background's gradient texture (the 3D render's shading: a blur and a Sobel pass over every slice) only when
// ``nv.lazyGradient`` is off. With it on (src/render_cache.js) it marks ``nv.gradientStale`` instead, and the
// gradient is built when a 3D pane is first drawn: 3.5 s of the ~4 s a volume costs in SwiftShader (issue 38),
// not needed for the slices shown at page open. The build fails if NiiVue's code no longer matches.
const GRADIENT_CALL = `      this.volumeTexture = outTexture;
      this.gradientTexture = gradientGL({`
const LAZY_GRADIENT = `      this.volumeTexture = outTexture;
      if (this.lazyGradient) this.gradientStale = true;
      else this.gradientTexture = gradientGL({`
let patched = false
const lazyGradient = {
  name: 'niivue-lazy-gradient',
  setup(b) {
    b.onLoad({ filter: /@niivue[\\/]niivue[\\/]build[\\/]niivue[\\/]index\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8')
      if (source.split(GRADIENT_CALL).length !== 2) throw new Error(`NiiVue changed: no single gradient call in ${args.path}`)
      patched = true
      return { contents: source.replace(GRADIENT_CALL, LAZY_GRADIENT), loader: 'js' }
    })
  },
}

rmSync('build', { recursive: true, force: true })
mkdirSync('build', { recursive: true })
copyFileSync('src/index.html', 'build/index.html')
const result = await build({
  entryPoints: ['src/index.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  splitting: true, // NiiVue's optional codecs (zarr, …) become lazy chunks that are never fetched here
  target: 'es2020',
  outdir: 'build',
  entryNames: 'index',
  chunkNames: 'chunk-[hash]',
  legalComments: 'linked',
  metafile: true,
  logLevel: 'info',
  plugins: [lazyGradient],
})
if (!patched) throw new Error('NiiVue was not bundled from the expected path: the lazy gradient patch did not apply')
const bytes = Object.values(result.metafile.outputs).reduce((sum, out) => sum + out.bytes, 0)
console.log(`build/: ${(bytes / 1e6).toFixed(2)} MB in ${Object.keys(result.metafile.outputs).length} files`)
