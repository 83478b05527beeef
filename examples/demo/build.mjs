// Builds the demo into the directory given as the only argument (nox -s demo writes
// src/trio_ysync/demo/static). The output depends only on the sources and the locked
// packages: fixed esbuild options, no timestamps, no source maps, files in sorted order.
import { build } from 'esbuild'
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = process.argv[2]
if (!outdir) {
  console.error('usage: node build.mjs OUTPUT_DIRECTORY')
  process.exit(2)
}
mkdirSync(outdir, { recursive: true })

const result = await build({
  absWorkingDir: here,
  entryPoints: ['src/main.js'],
  outfile: join(outdir, 'demo.js'),
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  platform: 'browser',
  charset: 'utf8',
  legalComments: 'none', // the licenses are collected in THIRD-PARTY-LICENSES.txt below
  sourcemap: false,
  metafile: true,
  logLevel: 'warning'
})

for (const name of ['index.html', 'demo.css']) copyFileSync(join(here, name), join(outdir, name))

// One license section per npm package that ended up in the bundle.
const packages = new Set()
for (const input of Object.keys(result.metafile.inputs)) {
  const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//)
  if (match) packages.add(match[1])
}
const sections = [...packages].sort().map((name) => {
  const root = join(here, 'node_modules', name)
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const licenseFile = readdirSync(root).sort().find((f) => /^(licen[cs]e|copying)/i.test(f))
  const text = licenseFile
    ? readFileSync(join(root, licenseFile), 'utf8').trim()
    : `License: ${manifest.license} (no license file in the package)`
  return `${name} ${manifest.version}\n${'-'.repeat(name.length + manifest.version.length + 1)}\n${text}\n`
})
writeFileSync(
  join(outdir, 'THIRD-PARTY-LICENSES.txt'),
  'The demo bundle (demo.js) contains these npm packages.\n\n' + sections.join('\n')
)
if (!existsSync(join(outdir, 'demo.js'))) process.exit(1)
