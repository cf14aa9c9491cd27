// For `node-red-dev validate` where the Node-RED catalogue host cannot be reached: catalogue
// look-ups get an empty catalogue; every other request goes through unchanged.
// Use: node -r ./scripts/node-red-dev-offline.js .tools/node-red-dev/node_modules/.bin/node-red-dev validate
'use strict';
const Module = require('module');

const originalLoad = Module._load;
Module._load = function load(request, ...rest) {
  const exported = originalLoad.call(this, request, ...rest);
  if (request === 'axios' && exported && !exported.vmbackupOffline) {
    const get = exported.get.bind(exported);
    exported.get = (url, ...more) =>
      /^https?:\/\/catalogue\./.test(String(url)) ? Promise.resolve({ data: { modules: [] } }) : get(url, ...more);
    exported.vmbackupOffline = true;
  }
  return exported;
};
