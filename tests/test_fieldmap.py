"""Field maps compose as docs/dissection.md §3 says: CaffeNet/AlexNet conv5 is (-64, 163, 16)."""

from netdissect.models.fieldmap import IDENTITY, FieldMap, largest


def test_caffenet_conv5_field_map():
    layers = [(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)]  # conv1 .. conv5
    field = IDENTITY
    for kernel, stride, pad in layers:
        field = field.then(FieldMap.of_window((kernel, kernel), (stride, stride), (pad, pad)))
    assert field == FieldMap(offset=(-64, -64), size=(163, 163), step=(16, 16))


def test_dilation_identity_and_merge():
    dilated = FieldMap.of_window((3, 3), dilation=(2, 1))
    assert dilated.size == (5, 3) and dilated.offset == (0, 0)
    one = FieldMap.of_window((7, 7), (2, 2), (3, 3))
    assert one.then(IDENTITY) == one == IDENTITY.then(one)
    assert largest(one, IDENTITY) == one and largest(IDENTITY, one) == one
