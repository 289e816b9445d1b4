import type { Request } from 'express';

/** `GET /` and `GET /v1.0`: the version documents of OTC-API querying_all_api_versions.rst. */
function version(req: Request) {
  return {
    id: 'v1.0',
    links: [{ href: `${req.protocol}://${req.get('host') ?? 'localhost'}/v1.0/`, rel: 'self' }],
    min_version: '',
    status: 'CURRENT',
    version: '',
    updated: '2018-09-05T08:18:05Z',
  };
}

export const versionsDocument = (req: Request) => ({ versions: [version(req)] });
export const versionDocument = (req: Request) => ({ version: version(req) });
