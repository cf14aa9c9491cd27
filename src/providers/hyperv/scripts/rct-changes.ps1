# Read-only: the ranges of a virtual disk changed since a Resilient Change Tracking id
# (Msvm_ImageManagementService.GetVirtualDiskChanges), asked of the backup snapshot's read-only
# parent, so the answer describes exactly the image being copied. The method may process less
# than asked (ProcessedByteLength) and its ByteLength must stay below the disk's size: asked in
# pieces until the whole disk is covered.
# Args (ArgsJson): { Path: "<parent .vhdx>", LimitId: "<RCT id>", Size: <virtual size>, JobSeconds?: int }
#   or, without LimitId/Size (the conformance kit): { Path, VmId, RecordName }: the RCT id is the
#   one our reference point RecordName holds for the VM's disk at Path, the size Get-VHD's
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $path = [string](Get-VmbArg $a 'Path')
    $limit = [string](Get-VmbArg $a 'LimitId' -Optional)
    $sizeArg = Get-VmbArg $a 'Size' -Optional
    if (-not $limit) {
        $vmId = ConvertTo-VmbGuid (Get-VmbArg $a 'VmId')
        $record = [string](Get-VmbArg $a 'RecordName')
        $vm = Hyper-V\Get-VM -Id $vmId
        $entry = @(Read-VmbReferencePointMap $vm | Where-Object { [string]$_.Name -ceq $record })[0]
        if ($null -eq $entry) { throw (New-Object System.InvalidOperationException "no reference point $record in the map of VM '$($vm.Name)'") }
        $rp = @(Get-VmbReferencePoints (Get-VmbComputerSystem $vmId) | Where-Object { [string]$_.InstanceID -eq [string]$entry.InstanceID })[0]
        if ($null -eq $rp) { throw (New-Object System.InvalidOperationException "reference point $record is gone") }
        # the VM's drive whose checkpoint parent is Path: its identity names the RCT id
        $drive = $null
        foreach ($cp in @(Get-VmbCheckpoints $vm)) { foreach ($d in @($cp.HardDrives)) { if ($d -and [string]$d.Path -eq $path) { $drive = $d } } }
        if ($null -eq $drive) { throw (New-Object System.InvalidOperationException "no checkpoint of VM '$($vm.Name)' has the parent $path") }
        # the VM's own drive at the same controller slot (a checkpoint's drive ids name the checkpoint)
        $drive = @(Hyper-V\Get-VMHardDiskDrive -VM $vm | Where-Object { [string]$_.ControllerType -eq [string]$drive.ControllerType -and $_.ControllerNumber -eq $drive.ControllerNumber -and $_.ControllerLocation -eq $drive.ControllerLocation })[0]
        $ids = @(ConvertTo-VmbStringArray $rp.VirtualDiskIdentifiers)
        for ($i = 0; $i -lt $ids.Count; $i++) {
            if (($ids[$i] -replace '\\[A-Z]$', '') -eq ([string]$drive.Id -replace '\\[A-Z]$', '')) { $limit = [string]@($rp.ResilientChangeTrackingIdentifiers)[$i] }
        }
        if (-not $limit) { throw (New-Object System.InvalidOperationException "reference point $record holds no RCT id for $path") }
    }
    if ($null -eq $sizeArg) { $sizeArg = (Hyper-V\Get-VHD -Path $path).Size }
    $size = [uint64]$sizeArg
    $jobSeconds = [int](Get-VmbArg $a 'JobSeconds' -Optional)
    if ($jobSeconds -le 0) { $jobSeconds = 300 }
    $service = Get-VmbCimService 'Msvm_ImageManagementService'
    $offsets = New-Object System.Collections.Generic.List[uint64]
    $lengths = New-Object System.Collections.Generic.List[uint64]
    $piece = [uint64]64GB
    if ($size -le $piece) { $piece = [uint64][Math]::Max(1MB, $size - 1MB) }
    $at = [uint64]0
    $calls = 0
    while ($at -lt $size) {
        $len = [uint64][Math]::Min($piece, $size - $at)
        $r = Invoke-CimMethod -InputObject $service -MethodName 'GetVirtualDiskChanges' -Arguments @{
            Path = $path; LimitId = $limit; TargetSnapshotId = ''; ByteOffset = $at; ByteLength = $len
        }
        Wait-VmbCimResult $r 'GetVirtualDiskChanges' $jobSeconds | Out-Null
        $calls++
        foreach ($o in @($r.ChangedByteOffsets)) { if ($null -ne $o) { $offsets.Add([uint64]$o) } }
        foreach ($l in @($r.ChangedByteLengths)) { if ($null -ne $l) { $lengths.Add([uint64]$l) } }
        $done = [uint64]$r.ProcessedByteLength
        if ($done -eq 0) { throw (New-Object System.InvalidOperationException "GetVirtualDiskChanges processed nothing at offset $at") }
        $at += $done
    }
    $out = [ordered]@{ Path = $path; LimitId = $limit; Size = $size; Calls = $calls; ChangedByteOffsets = @($offsets.ToArray()); ChangedByteLengths = @($lengths.ToArray()) }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
