// Bundles src/index.js (+ NiiVue from npm) into build/ for the Streamlit component: `npm run build`.
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, rmSync } from 'node:fs'

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
})
const bytes = Object.values(result.metafile.outputs).reduce((sum, out) => sum + out.bytes, 0)
console.log(`build/: ${(bytes / 1e6).toFixed(2)} MB in ${Object.keys(result.metafile.outputs).length} files`)
