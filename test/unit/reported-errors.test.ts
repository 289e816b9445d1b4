import { describe, expect, it } from 'vitest';
import { renderAlibabaError } from '../../src/api/alibaba/errors.js';
import { renderAwsError } from '../../src/api/aws/errors.js';
import { renderHuaweiError } from '../../src/api/huawei/errors.js';
import { renderXksError } from '../../src/api/xks/errors.js';
import { KmsError } from '../../src/core/errors.js';

const MESSAGE = "The HSM's random number generator failed its repetition count health test.";
const reported = () => new KmsError('HsmUnavailable', MESSAGE, { reported: true, retryAfterSeconds: 1 });
const plain = () => new KmsError('HsmUnavailable', 'HSM error CKR_DEVICE_ERROR (0x30) in C_Encrypt');

describe('an error the core reported itself (a failed random source)', () => {
  it('when a dialect renders it, then it keeps its retryable code and status, sends the message as is, and does not log it per request', () => {
    const huawei = renderHuaweiError(reported());
    expect(huawei).toMatchObject({ status: 503, unexpected: false });
    expect(huawei.body.error_code).toBe('KMS.0104');
    expect(huawei.body.error_msg).toBe(MESSAGE);

    const aws = renderAwsError(reported());
    expect(aws).toMatchObject({ status: 500, unexpected: false });
    expect(aws.body).toEqual({ __type: 'DependencyTimeoutException', message: MESSAGE });

    const alibaba = renderAlibabaError(reported(), 'request-id', 'kms.example');
    expect(alibaba).toMatchObject({ status: 503, unexpected: false });
    expect(alibaba.body).toMatchObject({ Code: 'ServiceUnavailableTemporary', Message: MESSAGE });

    const xks = renderXksError(reported());
    expect(xks).toMatchObject({ status: 503, unexpected: false });
    expect(xks.body).toEqual({ errorName: 'DependencyTimeoutException', errorMessage: MESSAGE });
  });

  it('when another HsmUnavailable is rendered, then it is still logged and answered in the dialect words', () => {
    expect(renderHuaweiError(plain())).toMatchObject({ unexpected: true });
    expect(renderHuaweiError(plain()).body.error_msg).toBe('A system exception occurred. Contact technical support.');
    expect(renderAwsError(plain())).toMatchObject({ unexpected: true });
    expect(renderAwsError(plain()).body.message).toMatch(/^The system timed out/);
    expect(renderAlibabaError(plain(), 'r', 'h')).toMatchObject({ unexpected: true });
    expect(renderAlibabaError(plain(), 'r', 'h').body.Message).toBe('Service Unavailable Temporary.');
    expect(renderXksError(plain())).toMatchObject({ unexpected: true });
  });
});
