# Resilient Change Tracking reference points of one VM (Windows Server 2016+):
#   convert: Msvm_VirtualSystemSnapshotService.ConvertToReferencePoint of our recovery snapshot
#            (Hyper-V deletes the snapshot as a side effect, merging its .avhdx), and our name for
#            the new reference point recorded in the VM's map (Hyper-V gives it only an InstanceID);
#   destroy: Msvm_VirtualSystemReferencePointService.DestroyReferencePoint of the reference points
#            our map names (RecordNames); a reference point not in our map is never touched.
# Args (ArgsJson): { Action: "convert"|"destroy", VmId: guid, SnapshotId?: guid, RecordName?: "vmbackup-...",
#                    RecordNames?: "vmbackup-...|vmbackup-...", JobSeconds?: int }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $action = [string](Get-VmbArg $a 'Action')
    $vmId = ConvertTo-VmbGuid (Get-VmbArg $a 'VmId')
    $jobSeconds = [int](Get-VmbArg $a 'JobSeconds' -Optional)
    if ($jobSeconds -le 0) { $jobSeconds = 300 }
    Assert-VmbNotMoved $vmId
    $vm = Hyper-V\Get-VM -Id $vmId
    $cs = Get-VmbComputerSystem $vmId
    $map = @(Read-VmbReferencePointMap $vm)
    if ($action -ceq 'convert') {
        $snapshotId = ConvertTo-VmbGuid (Get-VmbArg $a 'SnapshotId')
        $record = Assert-VmbRecordName ([string](Get-VmbArg $a 'RecordName')) 'RecordName'
        $snap = Get-VmbSnapshotSettings $cs $snapshotId
        $done = @($map | Where-Object { [string]$_.Name -ceq $record })[0]
        if ($null -eq $snap -and $null -ne $done -and @(Get-VmbReferencePoints $cs | Where-Object { [string]$_.InstanceID -eq [string]$done.InstanceID }).Count -gt 0) {
            # converted already (a repeated release): nothing to do
            $out = [ordered]@{ ReferencePoint = $null; RecordName = $record; AlreadyConverted = $true; SnapshotGone = $true; State = Get-VmbVmState $vm }
            Write-VmbResult $out
        }
        if ($null -eq $snap) { throw (New-Object System.InvalidOperationException "VM '$($vm.Name)' has no snapshot $snapshotId to convert (removed meanwhile?)") }
        $service = Get-VmbCimService 'Msvm_VirtualSystemSnapshotService'
        $result = Invoke-CimMethod -InputObject $service -MethodName 'ConvertToReferencePoint' -Arguments @{ AffectedSnapshot = $snap }
        $job = Wait-VmbCimResult $result 'ConvertToReferencePoint' $jobSeconds
        $rp = $null
        if ($null -ne $job) { $rp = @(Get-CimAssociatedInstance -InputObject $job -ResultClassName 'Msvm_VirtualSystemReferencePoint')[0] }
        if ($null -eq $rp -and $null -ne $result.ResultingReferencePoint) { $rp = $result.ResultingReferencePoint | Get-CimInstance }
        if ($null -eq $rp) { throw (New-Object System.InvalidOperationException 'ConvertToReferencePoint reported success but named no reference point') }
        $info = Get-VmbReferencePointInfo $rp
        $entries = @($map | Where-Object { [string]$_.Name -cne $record }) + @([ordered]@{ Name = $record; InstanceID = $info.InstanceID; CreatedAt = ConvertTo-VmbIsoDate ([datetime]::UtcNow); Host = [string]$env:COMPUTERNAME })
        Write-VmbReferencePointMap $vm $entries
        $wait = Wait-VmbMerge $vmId 0
        $out = [ordered]@{ ReferencePoint = $info; RecordName = $record; SnapshotGone = ($null -eq (Get-VmbSnapshotSettings $cs $snapshotId)); State = Get-VmbVmState $wait.vm }
    } elseif ($action -ceq 'destroy') {
        $names = @(([string](Get-VmbArg $a 'RecordNames')).Split('|') | Where-Object { $_ })
        foreach ($n in $names) { Assert-VmbRecordName $n 'RecordNames' | Out-Null }
        $live = @(Get-VmbReferencePoints $cs)
        $service = $null
        $destroyed = New-Object System.Collections.Generic.List[string]
        $missing = New-Object System.Collections.Generic.List[string]
        $keep = New-Object System.Collections.Generic.List[object]
        foreach ($e in $map) {
            if ($names -cnotcontains [string]$e.Name) { $keep.Add($e); continue }
            $rp = @($live | Where-Object { [string]$_.InstanceID -eq [string]$e.InstanceID })[0]
            if ($null -eq $rp) { $missing.Add([string]$e.Name); continue }
            if ($null -eq $service) { $service = Get-VmbCimService 'Msvm_VirtualSystemReferencePointService' }
            $result = Invoke-CimMethod -InputObject $service -MethodName 'DestroyReferencePoint' -Arguments @{ AffectedReferencePoint = $rp }
            Wait-VmbCimResult $result 'DestroyReferencePoint' $jobSeconds | Out-Null
            $destroyed.Add([string]$e.Name)
        }
        foreach ($n in $names) { if (-not ($destroyed -ccontains $n) -and -not ($missing -ccontains $n)) { $missing.Add($n) } }
        # the map is written only when an entry went (a VM without backups gets no file)
        if ($keep.Count -ne $map.Count) { Write-VmbReferencePointMap $vm @($keep.ToArray()) }
        $out = [ordered]@{ Destroyed = @($destroyed.ToArray()); NotFound = @($missing.ToArray()) }
    } else {
        throw (New-Object System.ArgumentException "Action '$action' is not convert or destroy")
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
