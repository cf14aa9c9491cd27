// ESLint 9 flat config (issue 12). typescript-eslint's recommended rules without type information:
// the type-aware set (no-floating-promises and friends) needs the whole program for every run and
// would make `npm run lint` as slow as the build. eslint-config-prettier comes last so that no
// rule here argues with the formatter about layout.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

export default tseslint.config(
  {
    // build output and installed modules; lab and tool state lives in the git-ignored dot folders
    ignores: ['dist/**', 'node_modules/**', '.lab/**', '.nr5/**', '.tools/**'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // _-prefixed names are kept on purpose (a callback's unused leading argument, a skipped element);
      // a caught error that is not looked at is the normal "it failed, fall back" case here
      '@typescript-eslint/no-unused-vars': [
        'error',
        { args: 'after-used', argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
      // the code compares with === everywhere; == null as a shortcut would be the only exception and none is used
      eqeqeq: ['error', 'always'],
      // require() on purpose: a provider, ssh2 and the guardian's helpers load only when used (a QEMU
      // host never loads ssh2; the guardian process starts fast), typed with `as typeof import(...)`;
      // tests and the bench load built files by computed path
      '@typescript-eslint/no-require-imports': 'off',
      // `const node = this` is how a Node-RED node constructor hands itself to its callbacks
      '@typescript-eslint/no-this-alias': ['error', { allowedNames: ['node'] }],
    },
  },
  {
    // Tests, fault cases and the bench read JSON (payloads, manifests, QMP answers, results) and poke
    // at internals: `any` there is the point (300 uses), and a test double captures `this`. src/,
    // nodes/ and lab/ keep both rules.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-this-alias': 'off',
    },
  },
  {
    // QMP and guest agent replies are JSON the peer defines: the protocol layer passes them on as
    // `any` and each caller names the type it expects (execute<T>)
    files: ['src/providers/qemu/protocol/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // plain CommonJS Node scripts beside the TypeScript
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', module: 'writable', __dirname: 'readonly', process: 'readonly', console: 'readonly' },
    },
  },
  prettier,
);
